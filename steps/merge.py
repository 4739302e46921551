"""Step: merge the final adapter into the base as a full model dir."""

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import step

from materializers import DirectoryMaterializer
from steps._metadata import log
from tuneline.artifacts import AdapterDir, ModelDir
from tuneline.base_model import BaseModelRef
from tuneline.merge import merge as merge_adapter


@step(output_materializers={"merged_model": DirectoryMaterializer})
def merge(base: BaseModelRef, adapter: AdapterDir) -> Annotated[ModelDir, "merged_model"]:
    base = base.ensure()
    out = Path(tempfile.mkdtemp(prefix="merged-"))
    card = {"adapter_kind": adapter.kind, "method": adapter.method, "adapter_metrics": adapter.metrics}
    merge_adapter(base, adapter.path, out, card=card)
    log({"adapter_kind": adapter.kind, "base_model": base.source})
    return ModelDir(path=str(out), base=base, adapters=[adapter.kind])
