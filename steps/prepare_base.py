"""Step: resolve the base model to a local dir, converting and caching it once."""

from typing import Annotated

from zenml import step

from steps._metadata import log
from tuneline.config import BaseModelConfig
from tuneline.model.base import BaseModelRef, prepare


@step
def prepare_base(config: BaseModelConfig) -> Annotated[BaseModelRef, "base_model"]:
    ref = prepare(config)
    log({"source": ref.source, "path": ref.path, "sha256": ref.sha256})
    return ref
