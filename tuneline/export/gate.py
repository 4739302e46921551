"""The gate every exported file passes, whatever its format: what it is asked, what it is judged against, the verdict.

    checks = ExportChecks.of(cfg.evaluate, cfg.export)
    merged = merged_results(merged_dir, rows, cfg.export.max_new_tokens, checks)   # the reference
    entry.passed, entry.reason = verdict(entry, gate_for(cfg.export, merged))

`tuneline export configs/default.yaml /tmp/merged --out /tmp/gguf` runs it through gguf.export_gguf
(GPTQ/AWQ: quantize.export_quantized). The reference is the merged HF model's score on the same held-out
rows and its perplexity on the same token ids, so a quantized file is judged by what quantization lost,
not by how good the model was to begin with.
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneline.config import EvaluateConfig, ExportConfig, GSM8KConfig, MMLUConfig, PerplexityConfig
from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.task import TaskResult
from tuneline.export.records import ExportFile

MIN_EOS_SHARE = 0.9


class ExportChecks(BaseModel):
    """What the exports take of `evaluate`, and only that, so an export step's cache key moves with these
    knobs and not with the rest of the section (bootstrap_resamples, the HF evaluation's batch sizes).
    The benchmark fields read like EvaluateConfig's, so run_benchmarks and run_gguf_benchmarks take it."""

    metric: str = "exact_match"  # evaluate.metric: the task metric every file is scored with
    perplexity: PerplexityConfig | None = None  # evaluate.perplexity's general texts; None: no perplexity check
    mmlu: MMLUConfig | None = None  # None (and gsm8k None): no benchmarks on the exports
    gsm8k: GSM8KConfig | None = None
    benchmark_batch_size: int = 4
    seed: int = 0

    @classmethod
    def of(cls, evaluate: EvaluateConfig, export: ExportConfig) -> ExportChecks:
        bench = export.benchmarks
        return cls(metric=evaluate.metric, perplexity=evaluate.perplexity, mmlu=evaluate.mmlu if bench else None,
                   gsm8k=evaluate.gsm8k if bench else None, benchmark_batch_size=evaluate.benchmark_batch_size,
                   seed=evaluate.seed)

    @property
    def benchmarks(self) -> bool:
        return self.mmlu is not None or self.gsm8k is not None


class Gate(BaseModel):
    """What each file is judged against: the merged HF model, on the same rows and the same tokens."""

    reference_accuracy: float
    max_accuracy_drop: float
    reference_ppl: float | None = None  # None: no perplexity check
    # Allowed relative perplexity rise per type (upper-case names); "*" for every other type.
    max_ppl_increase: dict[str, float] = {"*": 0.05}
    min_eos_share: float = MIN_EOS_SHARE

    def ppl_limit(self, qtype: str) -> float:
        return self.max_ppl_increase.get(qtype, self.max_ppl_increase.get("*", 0.05))


class Probe(BaseModel):
    """What each GGUF file is asked: the held-out chats (task metric, EOS) and general text (perplexity)."""

    conversations: list[list[dict]]
    answers: list[str]
    max_tokens: int
    metric: str = "exact_match"
    ppl_ids: list[list[int]] = []  # perplexity.encode_texts of the general texts; [] skips perplexity


def verdict(entry: ExportFile, gate: Gate) -> tuple[bool, str]:
    floor = gate.reference_accuracy - gate.max_accuracy_drop
    problems, fine = [], []
    if entry.score < floor:
        problems.append(f"score {entry.score:.3f} < {floor:.3f} "
                        f"(reference {gate.reference_accuracy:.3f} - allowed drop {gate.max_accuracy_drop:.3f})")
    else:
        fine.append(f"score {entry.score:.3f} >= {floor:.3f}")
    if entry.perplexity_increase is not None:
        limit = gate.ppl_limit(entry.qtype)
        text = (f"perplexity {entry.perplexity:.3f} vs merged {gate.reference_ppl:.3f} "
                f"({entry.perplexity_increase:+.2%}, limit +{limit:.2%})")
        (problems if entry.perplexity_increase > limit else fine).append(text)
    if entry.eos_share < gate.min_eos_share:
        problems.append(f"only {entry.eos_share:.0%} of answers stopped at EOS (need {gate.min_eos_share:.0%}); "
                        "the rest ran to the token limit")
    elif gate.min_eos_share > 0:  # 0: not checked (GPTQ/AWQ answer through the merged model's generation config)
        fine.append(f"{entry.eos_share:.0%} of answers stopped at EOS")
    return (False, "; ".join(problems)) if problems else (True, ", ".join(fine))


class MergedResults(BaseModel):
    task: TaskResult
    benchmarks: dict[str, BenchmarkResult] = {}
    perplexity: PerplexityResult | None = None
    ppl_ids: list[list[int]] = []  # the general texts' token ids, for scoring the exports on the same tokens


def checked_rows(records: list[dict], cfg: ExportConfig) -> list[dict]:
    """The eval rows every file is scored on (export.check_rows of them, or all)."""
    return records[: cfg.check_rows] if cfg.check_rows else records


def merged_results(model_dir: str, records: list[dict], max_new_tokens: int, checks: ExportChecks,
                   texts: list[str] = (), benchmarks: bool = True) -> MergedResults:
    """The merged HF model on the task rows, on the checks' MMLU / GSM8K when `benchmarks`, and on `texts`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.eval.harness import run_benchmarks
    from tuneline.eval.perplexity import encode_texts, perplexity
    from tuneline.eval.task import score_task

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    out = MergedResults(task=score_task(model, tok, records, max_new_tokens, batch_size=32, metric=checks.metric))
    if benchmarks and checks.benchmarks:
        out.benchmarks = run_benchmarks(model, tok, checks)
    if texts:
        out.perplexity, out.ppl_ids = perplexity(model, tok, list(texts)), encode_texts(tok, list(texts))
    return out


def gate_for(cfg: ExportConfig, merged: MergedResults, min_eos_share: float = MIN_EOS_SHARE) -> Gate:
    """export's limits around the merged model's score and perplexity."""
    return Gate(reference_accuracy=merged.task.score, max_accuracy_drop=cfg.max_accuracy_drop,
                min_eos_share=min_eos_share, reference_ppl=merged.perplexity.ppl if merged.perplexity else None,
                max_ppl_increase=cfg.ppl_limits())
