"""Step: task metric for SFT/DPO, benchmarks and perplexity for the final model, each paired with the base's
scores from `evaluate_base` (cached across retrains), with CIs. With `final_on_merged` (the pipeline's
`scored_on_merged`) the final model's benchmarks and perplexity come from score_merged instead, measured once on
the merged weights, and join the report in `promote`.

Perplexity scores the run's `general_text` snapshot (snapshot_data), not the file as it is now, so an edited
file re-runs this step. With an MLflow tracker (configs/env/mlflow.yaml) every candidate's metrics go to the
run's MLflow run."""

from typing import Annotated

import pandas as pd
from zenml import step

from steps._cache import code_cache
from steps._metadata import log
from steps._tracking import log_evaluation
from tuneline.artifacts import TrainedDir
from tuneline.config import EvaluateConfig
from tuneline.dashboard import Report, evaluation_report
from tuneline.eval.evaluate import BaseEvaluation, eval_rows
from tuneline.eval.evaluate import evaluate as run_evaluation
from tuneline.eval.perplexity import GeneralText
from tuneline.eval.report import EvalReport
from tuneline.model.base import BaseModelRef


@step(cache_policy=code_cache(__name__))
def evaluate(
    base: BaseModelRef, sft_adapter: TrainedDir, dpo_adapter: TrainedDir | None, task_data: pd.DataFrame,
    config: EvaluateConfig, general_text: GeneralText | None = None, base_evaluation: BaseEvaluation | None = None,
    final_on_merged: bool = False,
) -> tuple[Annotated[EvalReport, "evaluation"], Annotated[Report, "evaluation_report"]]:
    config = general_text.pin(config) if general_text else config
    adapters = {"sft": sft_adapter.path} | ({"dpo": dpo_adapter.path} if dpo_adapter else {})
    rows = eval_rows(task_data)  # the same rows, by the same function, as evaluate_base's
    report = run_evaluation(base.ensure(), adapters, sft_adapter.method, rows.rows, config, rows.max_new_tokens,
                            base=base_evaluation, final_on_merged=final_on_merged)
    log(report.summary())
    log_evaluation(report)
    return report, evaluation_report(report)
