"""The promotion gate: a pure decision from the evaluation report and the export checks.

Rules (config `promote`):
- task: the final model's accuracy gain over the base must be significant (bootstrap CI above 0)
  and at least `min_task_gain`;
- forgetting: a benchmark fails when its drop is significant (CI entirely below 0) and larger
  than `max_benchmark_drop`; noise on a small set cannot fail it, a real large drop does;
- perplexity on held-out general text: fails when the rise is significant and larger than
  `max_perplexity_increase` (relative);
- the version now in the target stage: the new final model must not be significantly worse
  on the task, paired on the eval items both were scored on;
- merge: the merged model may not be significantly worse than the adapter it was merged from
  (same rows, paired);
- exports: at least one exported file must have passed its own check.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from tuneline.config import PromoteConfig
from tuneline.eval.evaluate import EvalReport
from tuneline.eval.stats import paired_bootstrap


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
    if d.ci_high < 0:
        return False, text + ": significantly worse than the version it would replace"
    return True, text


def merged_vs_final(report: EvalReport) -> tuple[bool, str]:
    """The merged weights are the final adapter's: the same answers, up to float rounding."""
    m, f = report.task["merged"], report.task[report.final]
    final = dict(zip(f.item_ids, zip(f.per_item, f.predictions)))
    pairs = [(s, p, *final[i]) for i, s, p in zip(m.item_ids, m.per_item, m.predictions) if i in final]
    same = sum(p == fp for _, p, _, fp in pairs)
    d = paired_bootstrap([s for s, *_ in pairs], [fs for *_, fs, _ in pairs])
    text = (f"merged model {d.mean_candidate:.3f} vs {report.final} adapter {d.mean_base:.3f} "
            f"({same}/{len(pairs)} identical answers)")
    if d.ci_high < 0:
        return False, text + ": merging lost accuracy (check the merge dtype and the saved tokenizer/template)"
    return True, text


def decide(report: EvalReport, exports: list[dict], cfg: PromoteConfig, current: EvalReport | None = None) -> Decision:
    ok, reasons = True, []
    d = report.task_vs_base[report.final]
    if d.ci_low <= 0 or d.diff < cfg.min_task_gain:
        ok = False
        reasons.append(
            f"task accuracy gain {d.diff:+.3f} (95% CI {d.ci_low:+.3f}..{d.ci_high:+.3f}) is not a significant gain "
            f"of at least promote.min_task_gain={cfg.min_task_gain}"
        )
    else:
        reasons.append(f"task accuracy {d.mean_base:.3f} -> {d.mean_candidate:.3f} ({d.diff:+.3f}, CI {d.ci_low:+.3f}..{d.ci_high:+.3f})")
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
        rise = math.exp(d.diff) - 1
        base_ppl, final_ppl = math.exp(d.mean_base), math.exp(d.mean_candidate)
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
    passed = [e for e in exports if e.get("passed")]
    if exports and not passed:
        ok = False
        reasons.append("no exported file passed its check: " + "; ".join(f"{e['qtype']}: {e['reason']}" for e in exports))
    elif exports:
        reasons.append("exports passing their check: " + ", ".join(e["qtype"] for e in passed))
    return Decision(promote=ok, stage=cfg.stage if ok else None, reasons=reasons)
