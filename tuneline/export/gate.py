"""Export the merged model to GGUF and check every file against the merged model itself.

    python -m tuneline.export.gate configs/default.yaml /tmp/merged /tmp/gguf

The reference is the merged HF model's accuracy on the same held-out rows, so a quantized
file is judged by what quantization lost, not by how good the model was to begin with.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from tuneline.eval.benchmarks import BenchmarkResult, PerplexityResult
from tuneline.config import EvaluateConfig, ExportConfig
from tuneline.data.validate import messages
from tuneline.eval.evaluate import general_texts
from tuneline.export.gguf import ExportFile, ExportSample, Gate, Probe, export, verdict
from tuneline.eval.task import TaskResult


class GGUFExportResult(BaseModel):
    reference: TaskResult  # the merged HF model on the same rows: the "merged" candidate
    files: list[ExportFile]
    reference_benchmarks: dict[str, BenchmarkResult] = {}  # the merged model's MMLU / GSM8K
    reference_perplexity: PerplexityResult | None = None  # the merged model on the general texts

    @property
    def reference_accuracy(self) -> float:
        return self.reference.score


class MergedResults(BaseModel):
    task: TaskResult
    benchmarks: dict[str, BenchmarkResult] = {}
    perplexity: PerplexityResult | None = None
    ppl_ids: list[list[int]] = []  # the general texts' token ids, for scoring the exports on the same tokens


def merged_results(model_dir: str, records: list[dict], max_new_tokens: int, metric: str,
                   bench: EvaluateConfig | None = None, texts: list[str] = ()) -> MergedResults:
    """The merged HF model on the task rows, on `bench`'s MMLU / GSM8K when given, and on `texts`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.eval.benchmarks import encode_texts, perplexity, run_benchmarks
    from tuneline.eval.task import score_task

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    out = MergedResults(task=score_task(model, tok, records, max_new_tokens, batch_size=32, metric=metric))
    if bench is not None:
        out.benchmarks = run_benchmarks(model, tok, bench)
    if texts:
        out.perplexity, out.ppl_ids = perplexity(model, tok, list(texts)), encode_texts(tok, list(texts))
    return out


def export_gguf(model_dir: str, out_dir: Path, records: list[dict], cfg: ExportConfig,
                metric: str = "exact_match", evaluate: EvaluateConfig | None = None) -> GGUFExportResult:
    """Convert, quantize and check every file against the merged model (task metric, EOS, and perplexity on
    evaluate.perplexity's texts); with export.benchmarks, MMLU / GSM8K run on the merged model and on every
    file that passed, on the evaluation's items."""
    rows = records[: cfg.check_rows] if cfg.check_rows else records
    bench = evaluate if cfg.benchmarks else None
    texts = general_texts(evaluate) if evaluate is not None else []
    merged = merged_results(model_dir, rows, cfg.max_new_tokens, metric, bench, texts)
    probe = Probe(conversations=[messages(r, with_answer=False) for r in rows], answers=[r["assistant"] for r in rows],
                  max_tokens=cfg.max_new_tokens, metric=metric, ppl_ids=merged.ppl_ids)
    gate = Gate(reference_accuracy=merged.task.score, max_accuracy_drop=cfg.max_accuracy_drop,
                reference_ppl=merged.perplexity.ppl if merged.perplexity else None, max_ppl_increase=cfg.ppl_limits())
    files = export(model_dir, out_dir, cfg.gguf_types, probe, gate, auto_types=cfg.auto_types)
    if bench is not None:
        from tuneline.eval.gguf_lm import run_gguf_benchmarks

        for f in files:
            if f.passed:  # a rejected file is never shipped: benchmarking it would only cost time
                f.benchmarks = {k: r.model_dump() for k, r in run_gguf_benchmarks(f.path, bench).items()}
    return GGUFExportResult(reference=merged.task, files=files, reference_benchmarks=merged.benchmarks,
                            reference_perplexity=merged.perplexity)


class QuantizedExportResult(BaseModel):
    reference: TaskResult  # the merged HF model on the same rows
    reference_perplexity: PerplexityResult | None = None
    file: ExportFile  # the export's checks and verdict, in the same shape as a GGUF file's
    export: dict  # quantize.QuantExport: sizes, sha256 of the weights, tool versions, calibration


def export_quantized(model_dir: str, out_dir: Path, method: str, train_records: list[dict], records: list[dict],
                     qcfg, cfg: ExportConfig, metric: str = "exact_match",
                     evaluate: EvaluateConfig | None = None) -> QuantizedExportResult:
    """GPTQ or AWQ 4-bit (GPTQModel, calibrated on training rows), loaded back by transformers and judged
    like a GGUF file against the merged model: task metric and general-text perplexity on the same rows
    and tokens, the same gate (export.max_accuracy_drop, max_perplexity_increase.default). A file that
    fails the gate is kept and marked rejected; a quantization that cannot run raises."""
    from transformers import AutoTokenizer

    from tuneline.eval.benchmarks import perplexity, run_benchmarks
    from tuneline.eval.task import score_task
    from tuneline.export.quantize import calibration_texts, load_quantized, quantize

    rows = records[: cfg.check_rows] if cfg.check_rows else records
    texts = general_texts(evaluate) if evaluate is not None else []
    merged = merged_results(model_dir, rows, cfg.max_new_tokens, metric, None, texts)
    calib = calibration_texts(train_records, qcfg.calibration_rows, qcfg.seed, AutoTokenizer.from_pretrained(model_dir))
    start = time.monotonic()
    q = quantize(model_dir, out_dir, method, qcfg, calib)
    entry = ExportFile(qtype=f"W{q.bits}G{q.group_size}", path=q.path, size_bytes=q.size_bytes, sha256=q.sha256)
    model, tok = load_quantized(q.path)
    task = score_task(model, tok, rows, cfg.max_new_tokens, batch_size=32, metric=metric)
    # EOS is not measured here (min_eos_share 0 below): transformers stops on the merged model's generation
    # config, copied into the export; the report shows "-" for it.
    entry.score, entry.per_item = task.score, task.per_item
    entry.samples = [ExportSample(prompt=messages(r, with_answer=False)[-1]["content"], expected=r["assistant"],
                                  predicted=p, finish_reason="") for r, p in zip(rows, task.predictions)]
    gate = Gate(reference_accuracy=merged.task.score, max_accuracy_drop=cfg.max_accuracy_drop, min_eos_share=0.0,
                reference_ppl=merged.perplexity.ppl if merged.perplexity else None, max_ppl_increase=cfg.ppl_limits())
    if texts:
        entry.score_perplexity(perplexity(model, tok, texts), merged.perplexity.ppl)
    entry.passed, entry.reason = verdict(entry, gate)
    if entry.passed and cfg.benchmarks and evaluate is not None:
        entry.benchmarks = {k: r.model_dump() for k, r in run_benchmarks(model, tok, evaluate).items()}
    entry.seconds = round(time.monotonic() - start, 3)  # quantizing plus checking, as for a GGUF file
    return QuantizedExportResult(reference=merged.task, reference_perplexity=merged.perplexity, file=entry,
                                 export=q.model_dump())


if __name__ == "__main__":
    import sys

    from tuneline.model.base import load_tokenizer, prepare
    from tuneline.config import load
    from tuneline.data.validate import validate

    cfg = load(sys.argv[1])
    v = validate(cfg.data, load_tokenizer(prepare(cfg.base_model)))
    res = export_gguf(sys.argv[2], Path(sys.argv[3]), v.task[v.task.split == "eval"].to_dict("records"), cfg.export,
                      cfg.evaluate.metric, cfg.evaluate)
    print(f"merged: {res.reference.score:.3f} on {res.reference.n} rows")
    for f in res.files:
        print(f"{f.qtype}{' (auto)' if f.auto else ''}: {f.size_bytes / 2**20:.1f} MB, {f.score:.3f}, "
              f"ppl {f.perplexity or 0:.3f}, {'passed' if f.passed else 'REJECTED'} ({f.reason})")
