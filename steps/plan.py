"""Step: the memory and cost plan (full / LoRA / QLoRA) from the model config, before any training.

Shows the table (estimated peak GB, fits or not, relative time/cost) as an HTML artifact and logs the
estimates and what `method: auto` picks as metadata. Loads no weights. `gpu_gb` plans for a GPU of
that size; left out, it plans for this machine (its GPU, else its available RAM). On a remote stack,
where this step runs in a CPU pod, set it in the overlay (`steps: plan: parameters: gpu_gb: 80`);
`train_sft` makes the final `auto` choice on its own machine with the same function.
With `method: auto` and nothing that fits, the step fails here, before any data is validated or trained.
"""

from typing import Annotated

from zenml import step
from zenml.types import HTMLString

from steps._cache import code_cache
from steps._metadata import log
from tuneline.config import SFTConfig
from tuneline.model.base import BaseModelRef
from tuneline.train.plan import plan_report


@step(cache_policy=code_cache(__name__))
def plan(base: BaseModelRef, config: SFTConfig, max_tokens: int,
         gpu_gb: float | None = None) -> Annotated[HTMLString, "memory_plan"]:
    html, metadata = plan_report(base.ensure(), config, max_tokens, gpu_gb)
    log(metadata)
    if config.method == "auto" and metadata["auto_method"] is None:
        raise ValueError(f"sft.method auto: {metadata['auto_reason']}. Lower sft.batch_size or data.max_tokens, "
                         "or plan for a larger GPU (plan step parameter gpu_gb)")
    return HTMLString(html)
