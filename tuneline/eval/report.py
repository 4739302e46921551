"""The evaluation report: every candidate's task score, benchmarks and perplexity, each paired with the base.

    report = evaluate(ref, {"sft": sft_dir, "dpo": dpo_dir}, "lora", rows, cfg.evaluate)   # tuneline.eval.evaluate
    report.benchmarks_vs_base["mmlu"].ci_high, report.summary()

`tuneline evaluate configs/default.yaml` prints `summary()`; the promotion gate, the dashboard and the
model card read the fields. Each `PairedDiff` is candidate - base on the same items (tuneline.eval.stats).

Multi-task runs (data.tasks): `per_task()` pairs every candidate with the base task by task (each task's rows,
its own metric), for the report's per-task table and the promotion's per-task rule.
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.stats import PairedDiff, paired_bootstrap
from tuneline.eval.task import TaskResult


class TaskGain(BaseModel):
    """One task of a multi-task run: its metric, the base's score on its rows, each candidate's paired change."""

    task: str
    metric: str
    n: int
    base: float
    candidates: dict[str, PairedDiff]  # candidate -> candidate - base on this task's rows (the ids both scored)


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
    # The candidate whose MMLU / GSM8K / perplexity stand for the final model in benchmarks_vs_base and
    # nll_vs_base: `final` itself, or "merged" when the pipeline measures them once on the merged weights
    # (evaluate.scored_on_merged; promote.with_exports fills them in). "" in reports saved before it existed.
    forgetting_on: str = ""

    def per_task(self, resamples: int | None = None, seed: int = 0) -> list[TaskGain]:
        """Each task's paired change per candidate, on the task's rows as the base's result tags them ([] for a
        single-task run). `resamples`: the bootstrap's; by default the one the overall comparisons used."""
        base = self.task["base"]
        if not base.tasks:
            return []
        resamples = resamples or next((d.resamples for d in self.task_vs_base.values()), 2000)
        scores = {name: dict(zip(r.item_ids, r.per_item)) for name, r in self.task.items()}
        items = base.task_items()
        out = []
        for t in base.tasks:
            diffs = {}
            for name, mine in scores.items():
                ids = [i for i in items.get(t.name, []) if i in mine]
                if name != "base" and ids:
                    diffs[name] = paired_bootstrap([mine[i] for i in ids], [scores["base"][i] for i in ids],
                                                   resamples=resamples, seed=seed)
            out.append(TaskGain(task=t.name, metric=t.metric, n=t.n, base=t.score, candidates=diffs))
        return out

    def summary(self) -> dict:
        """Flat numbers for ZenML metadata and the run summary."""
        out = {f"task_accuracy/{k}": round(v.score, 4) for k, v in self.task.items()}
        for k, v in self.task.items():  # multi-task: each task's own score
            out.update({f"task_accuracy/{t.name}/{k}": round(t.score, 4) for t in v.tasks})
        for cand, res in self.benchmarks.items():
            out.update({f"{name}/{cand}": round(r.score, 4) for name, r in res.items()})
        for k, d in self.task_vs_base.items():
            out[f"task_gain/{k}"] = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        for k, d in self.benchmarks_vs_base.items():
            out[f"{k}_change"] = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        out.update({f"perplexity/{k}": round(v.ppl, 3) for k, v in self.perplexity.items()})
        return out
