"""The gate every exported file passes, whatever its format: what it is asked, what it is judged against, the verdict.

    checks = ExportChecks.of(cfg.evaluate, cfg.export, carried_length(task_data))  # the data step's length
    rows = checked_rows(eval_rows, cfg.export.check_rows)
    merged = merged_reference(merged_dir, rows, checks)     # the reference: the score_merged step, once per run
    entry.passed, entry.reason = verdict(entry, gate_for(cfg.export, merged))

`tuneline export configs/default.yaml /tmp/merged --out /tmp/gguf` runs it through gguf.export_gguf
(GPTQ/AWQ: quantize.export_quantized). The reference is the merged HF model's score on the same held-out
rows and its perplexity on the same token ids, so a quantized file is judged by what quantization lost,
not by how good the model was to begin with. The pipeline scores it once (steps/score_merged.py) and hands the
MergedReference to export_gguf, export_gptq and export_awq; `reference_for` checks that it was scored on the
export's rows and checks (its `key`), and scores the merged model itself only when given none (the CLI).

A raw-text task (evaluate.metric perplexity, data.shape text) asks no questions: every file is scored on the
held-out documents' token ids (the merged model's `task_ids`), and its task perplexity may rise at most the
type's export.max_perplexity_increase over the merged model's, like the general-text check; no EOS check.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from tuneline.config import EvaluateConfig, ExportConfig, GSM8KConfig, MMLUConfig, PerplexityConfig
from tuneline.eval.perplexity import GeneralText, perplexity_result
from tuneline.eval.scoring import lower_is_better
from tuneline.export.records import ExportFile, MergedReference

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
    bf16: Literal["auto", "true", "false"] = "auto"  # evaluate.bf16: the merged reference is scored as the evaluation scored the candidates
    # data.max_new_tokens as the data step resolved it (the export steps set it from task_data: with_length), so
    # every file answers with as many tokens as the evaluation and DPO mining did.
    max_new_tokens: int = 16

    @classmethod
    def of(cls, evaluate: EvaluateConfig, export: ExportConfig, max_new_tokens: int | None = None) -> ExportChecks:
        bench = export.benchmarks
        return cls(metric=evaluate.metric, perplexity=evaluate.perplexity, mmlu=evaluate.mmlu if bench else None,
                   gsm8k=evaluate.gsm8k if bench else None, benchmark_batch_size=evaluate.benchmark_batch_size,
                   seed=evaluate.seed, bf16=evaluate.bf16, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))

    def with_length(self, max_new_tokens: int) -> ExportChecks:
        return self.model_copy(update={"max_new_tokens": max_new_tokens})

    def of_run(self, max_new_tokens: int, general_text: GeneralText | None = None) -> ExportChecks:
        """As a run's score_merged and export steps check: data.max_new_tokens as the data step resolved it, and the
        general texts of the run's snapshot (the file is not read again: an edited file re-runs these steps)."""
        checks = self.with_length(max_new_tokens)
        return general_text.pin(checks) if general_text is not None else checks

    @property
    def benchmarks(self) -> bool:
        return self.mmlu is not None or self.gsm8k is not None


class Gate(BaseModel):
    """What each file is judged against: the merged HF model, on the same rows and the same tokens."""

    reference_accuracy: float
    max_accuracy_drop: float
    reference_ppl: float | None = None  # None: no perplexity check
    # The merged model's mean NLL per general text, in order: lets judge_perplexity compare a file on the texts
    # scored so far and stop early. [] (a gate built by hand): every text is scored, against reference_ppl.
    reference_nll: list[float] = []
    # Allowed relative perplexity rise per type (upper-case names); "*" for every other type.
    max_ppl_increase: dict[str, float] = {"*": 0.05}
    min_eos_share: float = MIN_EOS_SHARE
    metric: str = "exact_match"  # the task metric; perplexity: reference_accuracy is the merged model's perplexity

    def ppl_limit(self, qtype: str) -> float:
        return self.max_ppl_increase.get(qtype, self.max_ppl_increase.get("*", 0.05))

    def ppl_rejects(self, entry: ExportFile) -> bool:
        """The file's general-text perplexity alone already fails it (scored first: it is the cheaper check)."""
        return entry.perplexity_increase is not None and entry.perplexity_increase > self.ppl_limit(entry.qtype)


class Probe(BaseModel):
    """What each GGUF file is asked: the held-out chats (task metric, EOS) and general text (perplexity)."""

    conversations: list[list[dict]]
    answers: list[str]
    max_tokens: int
    metric: str | list[str] = "exact_match"  # one per conversation for multi-task rows (`probe_metric`)
    ppl_ids: list[list[int]] = []  # perplexity.encode_texts of the general texts; [] skips perplexity
    task_ids: list[list[int]] = []  # metric perplexity: the held-out documents' token ids (no conversations)


def _perplexity_rise(label: str, value: float, reference: float, limit: float, problems: list[str],
                     fine: list[str]) -> None:
    """A perplexity (the general texts', or a raw-text task's) may rise at most `limit` over the merged model's."""
    rise = value / reference - 1
    text = f"{label} {value:.3f} vs merged {reference:.3f} ({rise:+.2%}, limit +{limit:.2%})"
    (problems if rise > limit else fine).append(text)


# judge_perplexity scores the general texts LOOK at a time and stops once a file's rise is surely over its limit:
# its lower bound, EARLY_Z standard errors below the estimate (one-sided 0.05 %; at most 4 looks before the last,
# so under 0.2 % that a file whose full-text rise is at the limit stops early). Replayed on the default run's
# per-text NLLs (2026-12-04): Q5_K_M (+37 %) and AWQ (+27 %) stop after 20 of the 100 texts, GPTQ (+14 %) after 40,
# Q4_K_M (+6.8 %, limit 5 %) after 60; F16 and Q6_K, which pass, are scored on all 100, to the same numbers.
LOOK = 20
EARLY_Z = 3.29


def judge_perplexity(entry: ExportFile, score: Callable[[int, int], list[float]], tokens: list[int],
                     gate: Gate) -> None:
    """Score the file's general-text perplexity into `entry`: `score(start, end)` gives the mean NLL of texts
    start..end-1, whose scored token counts are `tokens` (the merged model's ids, len - 1). The texts go LOOK at a
    time; once the rise over the merged model on the texts so far is surely over the type's limit, the rest is not
    scored, and the entry carries that lower bound (`perplexity_bound`) beside the rise on those texts."""
    reference = gate.reference_nll if len(gate.reference_nll) == len(tokens) else []
    step = LOOK if reference else len(tokens)
    nll: list[float] = []
    bound = None
    for start in range(0, len(tokens), step):
        nll += score(start, min(start + step, len(tokens)))
        if reference and len(nll) < len(tokens):
            low = _rise_lower_bound(nll, reference, tokens)
            if low > gate.ppl_limit(entry.qtype):
                bound = low
                break
    entry.nll_per_item, entry.perplexity_bound = nll, bound
    entry.perplexity = _weighted_ppl(nll, tokens)
    entry.perplexity_reference = _weighted_ppl(reference[: len(nll)], tokens) if reference else gate.reference_ppl
    entry.perplexity_increase = entry.perplexity / entry.perplexity_reference - 1


def _weighted_ppl(nll: list[float], tokens: list[int]) -> float:
    """Token-weighted perplexity of the first len(nll) texts from their mean NLLs (perplexity_result's)."""
    n = tokens[: len(nll)]
    return perplexity_result([x * t for x, t in zip(nll, n)], n, start=0.0).ppl


def _rise_lower_bound(nll: list[float], reference: list[float], tokens: list[int]) -> float:
    """Lower bound of the perplexity rise on the texts scored so far: the token-weighted mean NLL difference
    (a ratio estimator over texts) minus EARLY_Z of its standard errors, as a relative rise."""
    k = len(nll)
    n = tokens[:k]
    diff = [t * (f - r) for t, f, r in zip(n, nll, reference)]
    total = sum(n)
    mean = sum(diff) / total
    spread = sum((d - mean * t) ** 2 for d, t in zip(diff, n)) * k / (k - 1)
    return math.exp(mean - EARLY_Z * math.sqrt(spread) / total) - 1


def verdict(entry: ExportFile, gate: Gate) -> tuple[bool, str]:
    floor = gate.reference_accuracy - gate.max_accuracy_drop
    problems, fine = [], []
    limit = gate.ppl_limit(entry.qtype)
    if lower_is_better(gate.metric):
        _perplexity_rise(f"task {gate.metric}", entry.score, gate.reference_accuracy, limit, problems, fine)
    elif not entry.asked:
        pass  # perplexity decides it below; the rows were not asked
    elif entry.score < floor:  # metric points (0..1): 0.02 is 2 points of accuracy, token F1 or ROUGE alike
        problems.append(f"score {entry.score:.3f} < {floor:.3f} ({gate.metric}: merged model "
                        f"{gate.reference_accuracy:.3f} - export.max_accuracy_drop "
                        f"{gate.max_accuracy_drop:.3f} points)")
    else:
        fine.append(f"score {entry.score:.3f} >= {floor:.3f} ({gate.metric})")
    if entry.perplexity_increase is not None:
        label = "perplexity"
        if entry.perplexity_bound is not None:
            label = f"perplexity on the first {len(entry.nll_per_item)} of {len(gate.reference_nll)} texts"
        _perplexity_rise(label, entry.perplexity, entry.perplexity_reference or gate.reference_ppl, limit, problems,
                         fine)
        if entry.perplexity_bound is not None:
            problems.append(f"at least {entry.perplexity_bound:+.2%} there ({EARLY_Z} standard errors): the other "
                            f"{len(gate.reference_nll) - len(entry.nll_per_item)} texts were not scored")
    if not entry.asked:
        if gate.ppl_rejects(entry):
            problems.append("task rows not asked (the perplexity check had already rejected it)")
    elif entry.eos_share < gate.min_eos_share:
        problems.append(f"only {entry.eos_share:.0%} of answers stopped at EOS (need {gate.min_eos_share:.0%}); "
                        "the rest ran to the token limit")
    elif gate.min_eos_share > 0:  # 0: not checked (GPTQ/AWQ answer through the merged model's generation config)
        fine.append(f"{entry.eos_share:.0%} of answers stopped at EOS")
    return (False, "; ".join(problems)) if problems else (True, ", ".join(fine))


def probe_metric(records: list[dict], metric: str) -> str | list[str]:
    """What a file's answers to these rows are scored with: `metric`, or for multi-task rows (data.tasks) each
    row's own task metric, as the merged model's were (score_task, which also gives each task its length)."""
    from tuneline.eval.task import row_metrics, row_task

    return row_metrics(records, metric) if any(map(row_task, records)) else metric


def checked_rows(records: list[dict], check_rows: int | None) -> list[dict]:
    """The eval rows every file is scored on (export.check_rows of them, or all)."""
    return records[:check_rows] if check_rows else records


def reference_key(rows: list[dict], checks: ExportChecks) -> str:
    """What a merged reference was scored on: the rows (every field) and the checks (metric, generation length,
    the general texts themselves when pinned, the benchmarks). Two exports with the same key compare with it."""
    payload = {"rows": rows, "checks": checks.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def merged_reference(model_dir: str, rows: list[dict], checks: ExportChecks,
                     benchmarks: bool = True) -> MergedReference:
    """The merged HF model on the task rows, on the checks' general texts (perplexity, and their token ids for
    scoring every file on the same tokens) and, when `benchmarks` and the checks have them, on MMLU / GSM8K."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.eval.harness import run_benchmarks
    from tuneline.eval.perplexity import encode_texts, general_texts, perplexity
    from tuneline.eval.task import documents, score_task
    from tuneline.model.precision import eval_autocast

    texts = general_texts(checks)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    with eval_autocast(checks.bf16):
        task = score_task(model, tok, rows, checks.max_new_tokens, batch_size=32, metric=checks.metric)
        out = MergedReference(key=reference_key(rows, checks), task=task)
        if lower_is_better(checks.metric):
            out.task_ids = encode_texts(tok, documents(rows))
        if benchmarks and checks.benchmarks:
            out.benchmarks = run_benchmarks(model, tok, checks)
        if texts:
            out.perplexity, out.ppl_ids = perplexity(model, tok, texts), encode_texts(tok, texts)
    return out


def reference_for(model_dir: str, rows: list[dict], checks: ExportChecks, reference: MergedReference | None = None,
                  benchmarks: bool = True) -> MergedReference:
    """`reference` (the score_merged step's) when it was scored on these rows and checks; without one, the
    merged model scored here (`tuneline export` by hand)."""
    if reference is None:
        return merged_reference(model_dir, rows, checks, benchmarks)
    if reference.key != reference_key(rows, checks):
        mine = reference_key(rows, checks)[:12]
        raise ValueError(f"the merged reference ({reference.task.n} rows, key {reference.key[:12]}) was scored on "
                         f"other rows or checks than this export's ({len(rows)} rows, key {mine}): "
                         "pass the score_merged output of the same task data, export.check_rows and evaluate settings")
    return reference


def gate_for(cfg: ExportConfig, merged: MergedReference, min_eos_share: float = MIN_EOS_SHARE) -> Gate:
    """export's limits around the merged model's score and perplexity."""
    generates = not lower_is_better(merged.task.metric)  # a perplexity task asks nothing: no answer ends at EOS
    return Gate(reference_accuracy=merged.task.score, max_accuracy_drop=cfg.max_accuracy_drop,
                min_eos_share=min_eos_share if generates else 0.0, metric=merged.task.metric,
                reference_ppl=merged.perplexity.ppl if merged.perplexity else None, max_ppl_increase=cfg.ppl_limits(),
                reference_nll=merged.perplexity.per_item if merged.perplexity else [])
