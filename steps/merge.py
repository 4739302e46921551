"""Step: merge the final adapter (optionally combined with other LoRA adapters: merge.combination) into
the base as a full model dir."""

from typing import Annotated

from zenml import step

from materializers import DirectoryMaterializer
from steps._cache import code_cache
from steps._cards import about
from steps._metadata import log
from tuneline.artifacts import ModelDir, TrainedDir, step_output
from tuneline.cards import card_datasets
from tuneline.config import MergeConfig
from tuneline.dashboard import evaluation_markdown
from tuneline.eval.report import EvalReport
from tuneline.model.base import BaseModelRef


@step(cache_policy=code_cache(__name__), output_materializers={"merged_model": DirectoryMaterializer})
def merge(base: BaseModelRef, adapter: TrainedDir, config: MergeConfig, evaluation: EvalReport | None = None,
          data_sha256: str = "", run_config: dict | None = None) -> Annotated[ModelDir, "merged_model"]:
    from tuneline.export.merge import merge as merge_adapter

    base = base.ensure()
    card = {"data_sha256": data_sha256, "adapter_kind": adapter.kind, "method": adapter.method,
            "parent_adapter": adapter.parent, "adapter_metrics": adapter.metrics, "config": run_config or {}}
    with step_output("merged") as out:  # deleted once the artifact store holds it
        merge_adapter(base, adapter.path, out, config.dtype, card=card, combination=config,
                      evaluation_md=evaluation_markdown(evaluation) if evaluation is not None else "",
                      about=about(datasets=card_datasets(adapter.path)), report=evaluation)
    log({"adapter_kind": adapter.kind, "base_model": base.source, "combination": config.combination,
         "combined_with": config.adapters, "dtype": config.dtype, "data_sha256": data_sha256})
    return ModelDir(path=str(out), base=base, adapters=[adapter.kind, *config.adapters])
