"""The promotion gate: a pure decision from the evaluation report and the export checks.

    report = with_exports(evaluation, gguf.reference, [*gguf.files, *gptq.files])   # merged + exports join
    decision = decide(report, files, cfg.promote, current)          # the pipeline's promote step

Rules (config `promote`):
- task: the final model's accuracy gain over the base must be significant (bootstrap CI above 0)
  and at least `min_task_gain`; for a lower-is-better task metric (perplexity of held-out documents,
  data.shape text) the gain is the drop in mean NLL per document (nats; 0.05 is about a 5 % lower perplexity);
- multi-task (data.tasks): the task rule reads the mean over all eval rows (each scored with its task's
  metric), and a task whose own paired gain is significant and negative (CI entirely below 0) blocks
  promotion, named in the reasons, however small the drop: the mix may not trade one task for another;
- forgetting: a benchmark fails when its drop is significant (CI entirely below 0) and larger
  than `max_benchmark_drop`; noise on a small set cannot fail it, a real large drop does;
- perplexity on held-out general text: fails when the rise is significant and larger than
  `max_perplexity_increase` (relative);
- the version now in the target stage: the new final model must not be significantly worse
  on the task, paired on the eval items both were scored on;
- merge: the merged model may not be significantly worse than the adapter it was merged from
  (same rows, paired);
- exports: at least one exported file must have passed its own check; the one that ships
  (tuneline.export.records.shipped: the smallest GGUF file that passed) is named.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from tuneline.config import PromoteConfig
from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.report import EvalReport
from tuneline.eval.scoring import MIXED, gain, lower_is_better
from tuneline.eval.stats import PairedDiff, paired_bootstrap
from tuneline.eval.task import TaskResult
from tuneline.export.records import ExportFile, shipped


class Decision(BaseModel):
    promote: bool
    stage: str | None
    reasons: list[str]

    def sentence(self) -> str:
        head = f"promoted to {self.stage}" if self.promote else "not promoted"
        return f"{head} because " + "; ".join(self.reasons)


def versus_current(new: EvalReport, current: EvalReport) -> tuple[bool, str]:
    """Paired comparison of the two final models on the eval items both were scored on."""
    a, b = new.task[new.final], current.task[current.final]
    mine, theirs = dict(zip(a.item_ids, a.per_item)), dict(zip(b.item_ids, b.per_item))
    common = sorted(set(mine) & set(theirs))
    if len(common) < 10:
        return True, f"only {len(common)} eval items in common with the current version: not compared"
    d = paired_bootstrap([mine[i] for i in common], [theirs[i] for i in common])
    text = f"vs the current version: {d.mean_base:.3f} -> {d.mean_candidate:.3f} on {d.n} common items (CI {d.ci_low:+.3f}..{d.ci_high:+.3f})"
    if gain(d, a.metric)[2] < 0:
        return False, text + ": significantly worse than the version it would replace"
    return True, text


# Perplexity moves with any rounding: the merged weights' dtype (merge.dtype) shifts every document's NLL a
# little, the same way, which is significant but no loss. A rise beyond this (nats, about 1 %) is one.
MERGE_NLL_TOLERANCE = 0.01


def merged_vs_final(report: EvalReport) -> tuple[bool, str]:
    """The merged weights are the final adapter's: the same answers (or, perplexity, the same NLLs) up to rounding."""
    m, f = report.task["merged"], report.task[report.final]
    final, said = dict(zip(f.item_ids, f.per_item)), dict(zip(f.item_ids, f.predictions))
    pairs = [(s, final[i]) for i, s in zip(m.item_ids, m.per_item) if i in final]
    d = paired_bootstrap([s for s, _ in pairs], [fs for _, fs in pairs])
    if lower_is_better(m.metric):
        text = (f"merged model {m.metric} {m.score:.3f} vs {report.final} adapter {f.score:.3f} "
                f"(mean NLL per document {d.diff:+.4f}, CI {d.ci_low:+.4f}..{d.ci_high:+.4f})")
        if d.ci_low > MERGE_NLL_TOLERANCE:
            return False, text + ": merging lost accuracy (check the merge dtype and the saved tokenizer)"
        return True, text
    same = sum(p == said.get(i) for i, p in zip(m.item_ids, m.predictions))
    text = (f"merged model {d.mean_candidate:.3f} vs {report.final} adapter {d.mean_base:.3f} "
            f"({same}/{len(pairs)} identical answers)")
    if d.ci_high < 0:
        return False, text + ": merging lost accuracy (check the merge dtype and the saved tokenizer/template)"
    return True, text


def _perplexities(report: EvalReport) -> tuple[float, float]:
    """Base and final perplexity as the report table shows them (token-weighted over all texts).

    The significance test pairs per-text mean NLLs; their exp is a different average (short texts
    weigh as much as long ones), so the sentence quotes the table's figures, not exp(mean NLL)."""
    base, final = report.perplexity.get("base"), report.perplexity.get(report.forgetting_on or report.final)
    if base and final:
        return base.ppl, final.ppl
    d = report.nll_vs_base
    return math.exp(d.mean_base), math.exp(d.mean_candidate)


def _metric(report: EvalReport) -> str:
    """The task metric's name as the reasons say it ('accuracy' for exact match, as before)."""
    metric = report.task[report.final].metric
    if metric == MIXED:
        return "score (mean over all tasks' rows, each in its task's metric)"
    return "accuracy" if metric == "exact_match" else metric


def task_drops(report: EvalReport) -> tuple[bool, list[str]]:
    """Multi-task: each task's paired gain of the final model; one that is significantly negative blocks."""
    ok, reasons = True, []
    for t in report.per_task():
        d = t.candidates.get(report.final)
        if d is None:
            continue
        g, low, high = gain(d, t.metric)
        text = (f"task '{t.task}' {t.metric} {d.mean_base:.3f} -> {d.mean_candidate:.3f} ({g:+.3f}, 95% CI "
                f"{low:+.3f}..{high:+.3f}, {d.n} rows)")
        if high < 0:
            ok = False
            reasons.append(text + ": the mix made this task significantly worse (raise its weight in data.tasks, "
                           "give it more training rows, or train it on its own)")
        else:
            reasons.append(text + ": no significant drop")
    return ok, reasons


def decide(report: EvalReport, exports: list[ExportFile], cfg: PromoteConfig, current: EvalReport | None = None) -> Decision:
    ok, reasons = True, []
    d = report.task_vs_base[report.final]
    if lower_is_better(report.task[report.final].metric):
        ok, text = _lower_is_better_task(report, d, cfg)
        reasons.append(text)
    elif d.ci_low <= 0 or d.diff < cfg.min_task_gain:  # metric points (0..1), whatever the metric
        ok = False
        reasons.append(
            f"task {_metric(report)} gain {d.diff:+.3f} (95% CI {d.ci_low:+.3f}..{d.ci_high:+.3f}) is not a "
            f"significant gain of at least promote.min_task_gain={cfg.min_task_gain} points"
        )
    else:
        reasons.append(f"task {_metric(report)} {d.mean_base:.3f} -> {d.mean_candidate:.3f} ({d.diff:+.3f}, "
                       f"CI {d.ci_low:+.3f}..{d.ci_high:+.3f})")
    fine, texts = task_drops(report)
    ok, reasons = ok and fine, reasons + texts
    for name, b in report.benchmarks_vs_base.items():
        if b.ci_high < 0 and b.diff < -cfg.max_benchmark_drop:
            ok = False
            reasons.append(
                f"{name} dropped {b.diff:+.3f} (CI {b.ci_low:+.3f}..{b.ci_high:+.3f}), beyond "
                f"promote.max_benchmark_drop={cfg.max_benchmark_drop}: the model forgot"
            )
        else:
            reasons.append(f"{name} {b.mean_base:.3f} -> {b.mean_candidate:.3f} (no significant drop beyond {cfg.max_benchmark_drop})")
    if report.nll_vs_base is not None:
        d = report.nll_vs_base
        base_ppl, final_ppl = _perplexities(report)
        rise = final_ppl / base_ppl - 1
        if d.ci_low > 0 and rise > cfg.max_perplexity_increase:
            ok = False
            reasons.append(f"general-text perplexity rose {rise:+.1%} ({base_ppl:.2f} -> {final_ppl:.2f}, significant), beyond "
                           f"promote.max_perplexity_increase={cfg.max_perplexity_increase}: the model forgot (mix general data "
                           "into training, lower the learning rate, or raise the limit if the task allows)")
        else:
            reasons.append(f"general-text perplexity {base_ppl:.2f} -> {final_ppl:.2f} ({rise:+.1%}, within {cfg.max_perplexity_increase:.0%})")
    if current is not None and cfg.compare_to_current:
        fine, text = versus_current(report, current)
        ok = ok and fine
        reasons.append(text)
    if "merged" in report.task:
        fine, text = merged_vs_final(report)
        ok = ok and fine
        reasons.append(text)
    passed = [e for e in exports if e.passed]
    if exports and not passed:
        ok = False
        reasons.append("no exported file passed its check: " + "; ".join(f"{e.qtype}: {e.reason}" for e in exports))
    elif exports:
        reasons.append("exports passing their check: " + ", ".join(e.qtype for e in passed))
        ship = shipped(exports)
        if ship is not None:  # the one file served and benchmarked (records.shipped)
            reasons.append(f"ships {ship.candidate} ({ship.size_bytes / 2**20:.1f} MB, "
                           "the smallest GGUF file that passed)")
    return Decision(promote=ok, stage=cfg.stage if ok else None, reasons=reasons)


def _lower_is_better_task(report: EvalReport, d: PairedDiff, cfg: PromoteConfig) -> tuple[bool, str]:
    """The task rule for perplexity: the drop in mean NLL per held-out document is the gain."""
    base, final = report.task["base"], report.task[report.final]
    g, low, high = gain(d, final.metric)
    text = (f"task {final.metric} {base.score:.2f} -> {final.score:.2f} on {d.n} held-out documents (mean NLL "
            f"drop {g:+.3f}, 95% CI {low:+.3f}..{high:+.3f})")
    if low <= 0 or g < cfg.min_task_gain:
        return False, text + f" is not a significant drop of at least promote.min_task_gain={cfg.min_task_gain}"
    return True, text


def with_exports(report: EvalReport, reference: TaskResult, exports: list[ExportFile], resamples: int = 2000,
                 seed: int = 0, reference_benchmarks: dict[str, BenchmarkResult] | None = None,
                 reference_perplexity: PerplexityResult | None = None) -> EvalReport:
    """`report` plus the merged model and every exported file as task candidates, paired with base.

    The exports were scored on the same eval rows (`reference.item_ids`, the merged model's run),
    so each gets a paired CI against the base like the adapters do; so do their MMLU / GSM8K results
    (`reference_benchmarks` for the merged model, each export's `benchmarks`), item by item.
    """
    task, diffs = dict(report.task), dict(report.task_vs_base)
    base = dict(zip(report.task["base"].item_ids, report.task["base"].per_item))
    candidates = {"merged": reference}
    for e in exports:
        if e.per_item:
            n = len(e.per_item)
            candidates[e.candidate] = TaskResult(
                score=e.score, n=n, per_item=e.per_item, item_ids=reference.item_ids[:n],
                predictions=e.predictions, seconds=e.ask_seconds, metric=reference.metric)
    for name, res in candidates.items():
        ids = [i for i in res.item_ids if i in base]
        if len(ids) != len(res.item_ids):
            raise ValueError(f"{name} was scored on {len(res.item_ids) - len(ids)} rows the base was not: "
                             "exports must be checked on the evaluation rows")
        task[name] = res
        diffs[name] = paired_bootstrap(res.per_item, [base[i] for i in ids], resamples=resamples, seed=seed)
    bench, changes = dict(report.benchmarks), dict(report.benchmark_changes)
    named = {"merged": reference_benchmarks or {}} | {e.candidate: e.benchmarks for e in exports}
    for name, results in named.items():
        if results:
            bench[name] = dict(results)
            changes[name] = {k: _paired_items(r, report.benchmarks["base"][k], resamples, seed)
                             for k, r in bench[name].items() if k in report.benchmarks.get("base", {})}
    ppl, nll = _export_perplexity(report, exports, reference_perplexity, resamples, seed)
    update = {"task": task, "task_vs_base": diffs, "benchmarks": bench, "benchmark_changes": changes,
              "perplexity": ppl, "nll_changes": nll}
    if report.forgetting_on == "merged":  # the evaluation left the final model's forgetting to these
        update |= {"benchmarks_vs_base": changes.get("merged", {}), "nll_vs_base": nll.get("merged")}
    return report.model_copy(update=update)


def _export_perplexity(report: EvalReport, exports: list[ExportFile], reference: PerplexityResult | None,
                       resamples: int, seed: int) -> tuple[dict, dict]:
    """The merged model's and each export's general-text perplexity, paired with base text by text
    (they scored evaluate.perplexity's texts, in order, on the same token ids)."""
    ppl, nll = dict(report.perplexity), dict(report.nll_changes)
    base = report.perplexity.get("base")
    # A file the gate stopped scoring early (perplexity_bound) has fewer texts than the base: rejected, never paired.
    named = {"merged": reference} | {e.candidate: PerplexityResult(ppl=e.perplexity, per_item=e.nll_per_item)
                                     for e in exports if e.nll_per_item and e.perplexity_bound is None}
    for name, res in named.items():
        if res is None or base is None:
            continue
        if len(res.per_item) != len(base.per_item):
            raise ValueError(f"{name} was scored on {len(res.per_item)} general texts, the base on {len(base.per_item)}: "
                             "exports must be checked on evaluate.perplexity's texts")
        ppl[name] = res
        nll[name] = paired_bootstrap(res.per_item, base.per_item, resamples=resamples, seed=seed)
    return ppl, nll


def _paired_items(res: BenchmarkResult, base: BenchmarkResult, resamples: int, seed: int) -> PairedDiff:
    """Candidate - base on the items both scored (by item id)."""
    b = dict(zip(base.item_ids, base.per_item))
    ids = [i for i in res.item_ids if i in b]
    if len(ids) != len(res.item_ids):
        raise ValueError(f"{res.name}: {len(res.item_ids) - len(ids)} items the base was not scored on")
    mine = dict(zip(res.item_ids, res.per_item))
    return paired_bootstrap([mine[i] for i in ids], [b[i] for i in ids], resamples=resamples, seed=seed)
