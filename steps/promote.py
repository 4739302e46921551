"""Step: the promotion gate. Never cached: the decision is made fresh on every run."""

from typing import Annotated

from zenml import get_step_context, step

from steps._metadata import log
from zenml.types import HTMLString

from tuneline.artifacts import ExportDir
from tuneline.config import PromoteConfig
from tuneline.evaluate import EvalReport
from tuneline.promote import Decision, decide
from tuneline.report import evaluation_html, run_summary


@step(enable_cache=False)
def promote(
    evaluation: EvalReport, gguf_export: ExportDir, config: PromoteConfig
) -> tuple[Annotated[Decision, "promotion"], Annotated[HTMLString, "final_report"]]:
    decision = decide(evaluation, gguf_export.files, config)
    model = get_step_context().model
    if decision.promote and model is not None:
        model.set_stage(decision.stage, force=True)
    log({"promoted": decision.promote, "stage": decision.stage or "none", "reasons": decision.reasons},
                 infer_model=True)
    print(run_summary(evaluation, gguf_export.files, decision.sentence(), model.name if model else None))
    return decision, HTMLString(evaluation_html(evaluation, decision.sentence(), gguf_export.files))
