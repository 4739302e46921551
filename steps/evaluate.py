"""Step: task metric for base/SFT/DPO, benchmarks and perplexity for base and final, paired CIs."""

from typing import Annotated

import pandas as pd
from zenml import step
from zenml.types import HTMLString

from steps._metadata import log
from tuneline.artifacts import TrainedDir
from tuneline.config import EvaluateConfig
from tuneline.dashboard import evaluation_html
from tuneline.eval.evaluate import evaluate as run_evaluation
from tuneline.eval.report import EvalReport
from tuneline.model.base import BaseModelRef


@step
def evaluate(
    base: BaseModelRef, sft_adapter: TrainedDir, dpo_adapter: TrainedDir | None, task_data: pd.DataFrame,
    config: EvaluateConfig,
) -> tuple[Annotated[EvalReport, "evaluation"], Annotated[HTMLString, "evaluation_report"]]:
    adapters = {"sft": sft_adapter.path} | ({"dpo": dpo_adapter.path} if dpo_adapter else {})
    rows = task_data[task_data.split == "eval"].to_dict("records")
    report = run_evaluation(base.ensure(), adapters, sft_adapter.method, rows, config)
    log(report.summary())
    return report, HTMLString(evaluation_html(report))
