"""Export the merged model to GGUF and check every file against the merged model itself.

    python -m tuneline.exports configs/default.yaml /tmp/merged /tmp/gguf

The reference is the merged HF model's accuracy on the same held-out rows, so a quantized
file is judged by what quantization lost, not by how good the model was to begin with.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tuneline.benchmarks import BenchmarkResult
from tuneline.config import EvaluateConfig, ExportConfig
from tuneline.data import messages
from tuneline.export_gguf import GGUFFile, export
from tuneline.generate import TaskResult


class GGUFExportResult(BaseModel):
    reference: TaskResult  # the merged HF model on the same rows: the "merged" candidate
    files: list[GGUFFile]
    reference_benchmarks: dict[str, BenchmarkResult] = {}  # the merged model's MMLU / GSM8K

    @property
    def reference_accuracy(self) -> float:
        return self.reference.accuracy


def merged_results(model_dir: str, records: list[dict], max_new_tokens: int, metric: str,
                   bench: EvaluateConfig | None = None) -> tuple[TaskResult, dict[str, BenchmarkResult]]:
    """The merged HF model on the task rows and, when `bench` is given, on its MMLU / GSM8K."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.benchmarks import run_benchmarks
    from tuneline.generate import task_accuracy

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    task = task_accuracy(model, tok, records, max_new_tokens, batch_size=32, metric=metric)
    return task, run_benchmarks(model, tok, bench) if bench is not None else {}


def export_gguf(model_dir: str, out_dir: Path, records: list[dict], cfg: ExportConfig,
                metric: str = "exact_match", evaluate: EvaluateConfig | None = None) -> GGUFExportResult:
    """Convert, quantize and check every file; with `evaluate` (and export.benchmarks), MMLU / GSM8K
    run on the merged model and on every file that loads, on the evaluation's items."""
    rows = records[: cfg.check_rows] if cfg.check_rows else records
    bench = evaluate if cfg.benchmarks else None
    reference, reference_benchmarks = merged_results(model_dir, rows, cfg.max_new_tokens, metric, bench)
    files = export(
        model_dir, out_dir, cfg.gguf_types,
        conversations=[messages(r, with_answer=False) for r in rows],
        answers=[r["assistant"] for r in rows],
        reference_accuracy=reference.accuracy, max_accuracy_drop=cfg.max_accuracy_drop,
        max_tokens=cfg.max_new_tokens, metric=metric,
    )
    if bench is not None:
        from tuneline.gguf_lm import run_gguf_benchmarks

        for f in files:
            if f.per_item:  # the file loaded and answered: benchmark it too
                f.benchmarks = {k: r.model_dump() for k, r in run_gguf_benchmarks(f.path, bench).items()}
    return GGUFExportResult(reference=reference, files=files, reference_benchmarks=reference_benchmarks)


if __name__ == "__main__":
    import sys

    from tuneline.base_model import load_tokenizer, prepare
    from tuneline.config import load
    from tuneline.data import validate

    cfg = load(sys.argv[1])
    v = validate(cfg.data, load_tokenizer(prepare(cfg.base_model)))
    res = export_gguf(sys.argv[2], Path(sys.argv[3]), v.task[v.task.split == "eval"].to_dict("records"), cfg.export,
                      cfg.evaluate.metric, cfg.evaluate)
    print(f"merged: {res.reference.accuracy:.3f} on {res.reference.n} rows")
    for f in res.files:
        print(f"{f.qtype}: {f.size_bytes / 2**20:.1f} MB, {f.accuracy:.3f}, {'passed' if f.passed else 'REJECTED'} ({f.reason})")
