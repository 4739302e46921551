"""MLflow logging from the steps that run with an MLflow experiment tracker; a no-op otherwise.

    zenml experiment-tracker register mlflow -f mlflow --tracking_uri=sqlite:///$PWD/mlflow.db
    zenml stack register tuneline-mlflow -o default -a default -e mlflow --set
    tuneline run configs/default.yaml configs/env/mlflow.yaml

configs/env/mlflow.yaml gives train_sft, train_dpo, evaluate and promote the stack's tracker; ZenML then opens
one MLflow run per pipeline run (named after it) before each of them. Here each step adds what it knows:
the training configs as parameters, the loss per logged step, every candidate's evaluation metrics, and tags
linking the MLflow run to the ZenML run. A step without a tracker (the default) never imports mlflow.
A cached step does not run, so it logs nothing: `enable_cache: false` re-logs everything.
"""

from __future__ import annotations

from typing import Any

from zenml import get_step_context
from zenml.client import Client

from tuneline.eval.report import EvalReport
from tuneline.promote import Decision

# History keys that are positions, not measurements.
NOT_METRICS = {"step", "epoch"}


def _mlflow():
    """The mlflow module when this step runs with an MLflow tracker (its run is active), else None."""
    context = get_step_context()
    wanted = context.step_run.config.experiment_tracker
    if not wanted:
        return None
    stack = Client().active_stack
    tracker = stack.experiment_tracker if wanted is True else stack.experiment_trackers.get(wanted)
    if tracker is None or tracker.flavor != "mlflow":
        return None
    import mlflow

    if mlflow.active_run() is None:
        return None
    from zenml.utils.dashboard_utils import get_run_url

    run = context.pipeline_run
    tags = {"zenml.run_id": str(run.id), "zenml.run_name": run.name, "zenml.pipeline": context.pipeline.name}
    url = get_run_url(run)
    if url:
        tags["zenml.run_url"] = url
    mlflow.set_tags(tags)
    return mlflow


def flat(tree: dict, prefix: str) -> dict[str, Any]:
    """Dotted keys for every leaf (`sft.lora.r`), the way MLflow compares parameters across runs."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _numbers(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_training(kind: str, config: dict, history: list[dict], metrics: dict, reproducibility: dict) -> None:
    """`kind`'s (sft, dpo) config and reproducibility facts as parameters, each logged step's values
    (loss, eval_loss, learning_rate, ...) as `<kind>/<key>` at that step, and the run's numeric totals."""
    mlflow = _mlflow()
    if mlflow is None:
        return
    trained = {"trained_method": metrics["method"]} if "method" in metrics else {}  # sft's `auto`, resolved
    mlflow.log_params(flat(config | trained | reproducibility, f"{kind}."))
    for entry in history:
        values = _numbers({k: v for k, v in entry.items() if k not in NOT_METRICS})
        if values and "step" in entry:
            mlflow.log_metrics({f"{kind}/{k}": v for k, v in values.items()}, step=int(entry["step"]))
    mlflow.log_metrics({f"{kind}/summary/{k}": v for k, v in _numbers(metrics).items()})


def candidate_metrics(report: EvalReport, candidates: list[str]) -> dict[str, float]:
    """Each candidate's task score, gain over base, benchmarks and general-text perplexity."""
    metric = report.task["base"].metric
    out = {}
    for name in candidates:
        out[f"eval/{name}/task_{metric}"] = report.task[name].score
        if name in report.task_vs_base:
            out[f"eval/{name}/task_gain"] = report.task_vs_base[name].diff
        for bench, result in report.benchmarks.get(name, {}).items():
            out[f"eval/{name}/{bench}"] = result.score
        if name in report.perplexity:
            out[f"eval/{name}/perplexity"] = report.perplexity[name].ppl
    return out


def log_evaluation(report: EvalReport, candidates: list[str] | None = None) -> None:
    """Every candidate's metrics (or only `candidates`': the ones this step added to the report)."""
    mlflow = _mlflow()
    if mlflow is None:
        return
    mlflow.log_metrics(candidate_metrics(report, list(report.task) if candidates is None else candidates))


def log_decision(decision: Decision) -> None:
    mlflow = _mlflow()
    if mlflow is None:
        return
    mlflow.set_tags({"tuneline.promoted": str(decision.promote).lower(), "tuneline.stage": decision.stage or "none",
                     "tuneline.decision": decision.sentence()[:5000]})
