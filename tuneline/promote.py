"""The promotion gate: a pure decision from the evaluation report and the export checks.

Rules (config `promote`):
- task: the final model's accuracy gain over the base must be significant (bootstrap CI above 0)
  and at least `min_task_gain`;
- forgetting: a benchmark fails when its drop is significant (CI entirely below 0) and larger
  than `max_benchmark_drop`; noise on a small set cannot fail it, a real large drop does;
- exports: at least one exported file must have passed its own check.
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneline.config import PromoteConfig
from tuneline.evaluate import EvalReport


class Decision(BaseModel):
    promote: bool
    stage: str | None
    reasons: list[str]

    def sentence(self) -> str:
        head = f"promoted to {self.stage}" if self.promote else "not promoted"
        return f"{head} because " + "; ".join(self.reasons)


def decide(report: EvalReport, exports: list[dict], cfg: PromoteConfig) -> Decision:
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
    passed = [e for e in exports if e.get("passed")]
    if exports and not passed:
        ok = False
        reasons.append("no exported file passed its check: " + "; ".join(f"{e['qtype']}: {e['reason']}" for e in exports))
    elif exports:
        reasons.append("exports passing their check: " + ", ".join(e["qtype"] for e in passed))
    return Decision(promote=ok, stage=cfg.stage if ok else None, reasons=reasons)
