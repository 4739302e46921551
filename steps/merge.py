"""Step: merge the final adapter (optionally combined with other LoRA adapters: merge.combination) into
the base as a full model dir."""

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import step

from materializers import DirectoryMaterializer
from steps._metadata import log
from tuneline.artifacts import AdapterDir, ModelDir
from tuneline.base_model import BaseModelRef
from tuneline.config import MergeConfig
from tuneline.merge import merge as merge_adapter


@step(output_materializers={"merged_model": DirectoryMaterializer})
def merge(base: BaseModelRef, adapter: AdapterDir, config: MergeConfig) -> Annotated[ModelDir, "merged_model"]:
    base = base.ensure()
    out = Path(tempfile.mkdtemp(prefix="merged-"))
    card = {"adapter_kind": adapter.kind, "method": adapter.method, "adapter_metrics": adapter.metrics}
    merge_adapter(base, adapter.path, out, config.dtype, card=card, combination=config)
    log({"adapter_kind": adapter.kind, "base_model": base.source, "combination": config.combination,
         "combined_with": config.adapters, "dtype": config.dtype})
    return ModelDir(path=str(out), base=base, adapters=[adapter.kind, *config.adapters])
