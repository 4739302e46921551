"""The evaluation report: every candidate's task score, benchmarks and perplexity, each paired with the base.

    report = evaluate(ref, {"sft": sft_dir, "dpo": dpo_dir}, "lora", rows, cfg.evaluate)   # tuneline.eval.evaluate
    report.benchmarks_vs_base["mmlu"].ci_high, report.summary()

`tuneline evaluate configs/default.yaml` prints `summary()`; the promotion gate, the dashboard and the
model card read the fields. Each `PairedDiff` is candidate - base on the same items (tuneline.eval.stats).
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.stats import PairedDiff
from tuneline.eval.task import TaskResult


class EvalReport(BaseModel):
    task: dict[str, TaskResult]  # candidate -> result on the eval rows
    task_vs_base: dict[str, PairedDiff]  # candidate -> paired diff vs base
    benchmarks: dict[str, dict[str, BenchmarkResult]]  # candidate -> benchmark -> result
    benchmarks_vs_base: dict[str, PairedDiff]  # benchmark -> final vs base (what the gate reads)
    perplexity: dict[str, PerplexityResult] = {}  # candidate -> general-text perplexity
    nll_vs_base: PairedDiff | None = None  # per-text mean NLL, final - base (positive = forgot)
    # Every benchmarked candidate vs base, so the report shows which stage forgot (SFT or DPO).
    benchmark_changes: dict[str, dict[str, PairedDiff]] = {}
    nll_changes: dict[str, PairedDiff] = {}
    final: str
    seconds: float

    def summary(self) -> dict:
        """Flat numbers for ZenML metadata and the run summary."""
        out = {f"task_accuracy/{k}": round(v.score, 4) for k, v in self.task.items()}
        for cand, res in self.benchmarks.items():
            out.update({f"{name}/{cand}": round(r.score, 4) for name, r in res.items()})
        for k, d in self.task_vs_base.items():
            out[f"task_gain/{k}"] = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        for k, d in self.benchmarks_vs_base.items():
            out[f"{k}_change"] = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        out.update({f"perplexity/{k}": round(v.ppl, 3) for k, v in self.perplexity.items()})
        return out
