"""Step: load, check and split the data; rejected rows are kept as an artifact."""

from typing import Annotated

import pandas as pd
from zenml import step
from zenml.types import HTMLString

from steps._metadata import log
from tuneline.base_model import BaseModelRef, load_tokenizer
from tuneline.config import DataConfig
from tuneline.data import validate
from tuneline.report import data_html


@step
def validate_data(
    base: BaseModelRef, config: DataConfig
) -> tuple[
    Annotated[pd.DataFrame, "task_data"],
    Annotated[pd.DataFrame, "preference_data"],
    Annotated[pd.DataFrame, "rejected_rows"],
    Annotated[HTMLString, "data_report"],
]:
    v = validate(config, load_tokenizer(base.ensure()))
    log({"counts": v.counts})
    preview = v.rejected.head(50).to_dict("records")
    return v.task, v.preferences, v.rejected, HTMLString(data_html(v.counts, preview))
