"""The gate every exported file passes, whatever its format: what it is asked, what it is judged against, the verdict.

    checks = ExportChecks.of(cfg.evaluate, cfg.export, carried_length(task_data))  # the data step's length
    merged = merged_results(merged_dir, rows, checks.max_new_tokens, checks)   # the reference
    entry.passed, entry.reason = verdict(entry, gate_for(cfg.export, merged))

`tuneline export configs/default.yaml /tmp/merged --out /tmp/gguf` runs it through gguf.export_gguf
(GPTQ/AWQ: quantize.export_quantized). The reference is the merged HF model's score on the same held-out
rows and its perplexity on the same token ids, so a quantized file is judged by what quantization lost,
not by how good the model was to begin with.

A raw-text task (evaluate.metric perplexity, data.shape text) asks no questions: every file is scored on the
held-out documents' token ids (the merged model's `task_ids`), and its task perplexity may rise at most the
type's export.max_perplexity_increase over the merged model's, like the general-text check; no EOS check.
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneline.config import EvaluateConfig, ExportConfig, GSM8KConfig, MMLUConfig, PerplexityConfig
from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.scoring import lower_is_better
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
    # data.max_new_tokens as the data step resolved it (the export steps set it from task_data: with_length), so
    # every file answers with as many tokens as the evaluation and DPO mining did.
    max_new_tokens: int = 16

    @classmethod
    def of(cls, evaluate: EvaluateConfig, export: ExportConfig, max_new_tokens: int | None = None) -> ExportChecks:
        bench = export.benchmarks
        return cls(metric=evaluate.metric, perplexity=evaluate.perplexity, mmlu=evaluate.mmlu if bench else None,
                   gsm8k=evaluate.gsm8k if bench else None, benchmark_batch_size=evaluate.benchmark_batch_size,
                   seed=evaluate.seed, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))

    def with_length(self, max_new_tokens: int) -> ExportChecks:
        return self.model_copy(update={"max_new_tokens": max_new_tokens})

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
    metric: str = "exact_match"  # the task metric; perplexity: reference_accuracy is the merged model's perplexity

    def ppl_limit(self, qtype: str) -> float:
        return self.max_ppl_increase.get(qtype, self.max_ppl_increase.get("*", 0.05))


class Probe(BaseModel):
    """What each GGUF file is asked: the held-out chats (task metric, EOS) and general text (perplexity)."""

    conversations: list[list[dict]]
    answers: list[str]
    max_tokens: int
    metric: str = "exact_match"
    ppl_ids: list[list[int]] = []  # perplexity.encode_texts of the general texts; [] skips perplexity
    task_ids: list[list[int]] = []  # metric perplexity: the held-out documents' token ids (no conversations)


def _perplexity_rise(label: str, value: float, reference: float, limit: float, problems: list[str],
                     fine: list[str]) -> None:
    """A perplexity (the general texts', or a raw-text task's) may rise at most `limit` over the merged model's."""
    rise = value / reference - 1
    text = f"{label} {value:.3f} vs merged {reference:.3f} ({rise:+.2%}, limit +{limit:.2%})"
    (problems if rise > limit else fine).append(text)


def verdict(entry: ExportFile, gate: Gate) -> tuple[bool, str]:
    floor = gate.reference_accuracy - gate.max_accuracy_drop
    problems, fine = [], []
    limit = gate.ppl_limit(entry.qtype)
    if lower_is_better(gate.metric):
        _perplexity_rise(f"task {gate.metric}", entry.score, gate.reference_accuracy, limit, problems, fine)
    elif entry.score < floor:  # metric points (0..1): 0.02 is 2 points of accuracy, token F1 or ROUGE alike
        problems.append(f"score {entry.score:.3f} < {floor:.3f} ({gate.metric}: merged model "
                        f"{gate.reference_accuracy:.3f} - export.max_accuracy_drop "
                        f"{gate.max_accuracy_drop:.3f} points)")
    else:
        fine.append(f"score {entry.score:.3f} >= {floor:.3f} ({gate.metric})")
    if entry.perplexity_increase is not None:
        _perplexity_rise("perplexity", entry.perplexity, gate.reference_ppl, limit, problems, fine)
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
    task_ids: list[list[int]] = []  # metric perplexity: the held-out documents' token ids, likewise


def checked_rows(records: list[dict], cfg: ExportConfig) -> list[dict]:
    """The eval rows every file is scored on (export.check_rows of them, or all)."""
    return records[: cfg.check_rows] if cfg.check_rows else records


def merged_results(model_dir: str, records: list[dict], max_new_tokens: int, checks: ExportChecks,
                   texts: list[str] = (), benchmarks: bool = True) -> MergedResults:
    """The merged HF model on the task rows, on the checks' MMLU / GSM8K when `benchmarks`, and on `texts`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.eval.harness import run_benchmarks
    from tuneline.eval.perplexity import encode_texts, perplexity
    from tuneline.eval.task import documents, score_task

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    out = MergedResults(task=score_task(model, tok, records, max_new_tokens, batch_size=32, metric=checks.metric))
    if lower_is_better(checks.metric):
        out.task_ids = encode_texts(tok, documents(records))
    if benchmarks and checks.benchmarks:
        out.benchmarks = run_benchmarks(model, tok, checks)
    if texts:
        out.perplexity, out.ppl_ids = perplexity(model, tok, list(texts)), encode_texts(tok, list(texts))
    return out


def gate_for(cfg: ExportConfig, merged: MergedResults, min_eos_share: float = MIN_EOS_SHARE) -> Gate:
    """export's limits around the merged model's score and perplexity."""
    generates = not lower_is_better(merged.task.metric)  # a perplexity task asks nothing: no answer ends at EOS
    return Gate(reference_accuracy=merged.task.score, max_accuracy_drop=cfg.max_accuracy_drop,
                min_eos_share=min_eos_share if generates else 0.0, metric=merged.task.metric,
                reference_ppl=merged.perplexity.ppl if merged.perplexity else None, max_ppl_increase=cfg.ppl_limits())
