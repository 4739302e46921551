"""Step: resolve the base model to a local dir, converting and caching it once, and its chat template."""

from typing import Annotated

from zenml import step

from steps._cache import code_cache
from steps._metadata import log
from tuneline.config import BaseModelConfig
from tuneline.model.base import BaseModelRef, prepare


@step(cache_policy=code_cache(__name__))
def prepare_base(config: BaseModelConfig, chat_template: str) -> Annotated[BaseModelRef, "base_model"]:
    """`chat_template` is data.chat_template: resolved here once, every later step uses the ref's template."""
    ref = prepare(config).with_template(chat_template)
    log({"source": ref.source, "path": ref.path, "sha256": ref.sha256,
         "chat_template": {"family": ref.template.family, "reason": ref.template.reason}})
    return ref
