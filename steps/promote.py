"""Step: the promotion gate. Never cached: the decision is made fresh on every run.

With an MLflow tracker (configs/env/mlflow.yaml) the merged model's and each export's metrics and the
decision go to the run's MLflow run (evaluate logs base, SFT and DPO)."""

from typing import Annotated

from zenml import get_step_context, step
from zenml.client import Client

from steps._metadata import log
from steps._tracking import log_decision, log_evaluation
from tuneline.artifacts import ExportDir
from tuneline.config import PromoteConfig
from tuneline.dashboard import Report, evaluation_report, run_summary
from tuneline.eval.report import EvalReport
from tuneline.promote import Decision, decide, with_exports


def current_evaluation(model_name: str, stage: str, this_version_id) -> EvalReport | None:
    """The evaluation of the model version now in `stage`, if any (not this run's own version)."""
    try:
        current = Client().get_model_version(model_name, stage)
    except KeyError:
        return None
    if current.id == this_version_id:
        return None
    artifact = current.get_artifact("evaluation")
    return artifact.load() if artifact is not None else None


@step(enable_cache=False)
def promote(
    evaluation: EvalReport, gguf_export: ExportDir, config: PromoteConfig,
    gptq_export: ExportDir | None = None, awq_export: ExportDir | None = None,
) -> tuple[Annotated[Decision, "promotion"], Annotated[EvalReport, "final_evaluation"],
           Annotated[Report, "final_report"]]:
    exports = [e for e in (gguf_export, gptq_export, awq_export) if e is not None]
    evaluated = list(evaluation.task)
    files = [f for e in exports for f in e.files]
    ref = exports[0] if exports else None
    if ref is not None:  # the merged model and each export join the candidates, paired with base
        evaluation = with_exports(evaluation, ref.reference, files, reference_benchmarks=ref.reference_benchmarks,
                                  reference_perplexity=ref.reference_perplexity)
    model = get_step_context().model
    current = current_evaluation(model.name, config.stage, model.id) if model is not None else None
    decision = decide(evaluation, files, config, current)
    if decision.promote and model is not None:
        model.set_stage(decision.stage, force=True)
    log({"promoted": decision.promote, "stage": decision.stage or "none", "reasons": decision.reasons},
        infer_model=True)
    log_evaluation(evaluation, [c for c in evaluation.task if c not in evaluated])
    log_decision(decision)
    print(run_summary(evaluation, files, decision.sentence(), model.name if model else None))
    return decision, evaluation, evaluation_report(evaluation, decision.sentence(), files)
