"""Step: SFT with TRL + PEFT; outputs the adapter (a few MB) and its loss curve.

`method: auto` is decided here, for this machine's memory (the `plan` step shows the same table first).
"""

from typing import Annotated

import pandas as pd
from zenml import step

from materializers import DirectoryMaterializer
from steps._cache import code_cache
from steps._cards import about
from steps._checkpoints import mirror
from steps._metadata import log
from steps._process import run_training
from steps._tracking import log_training
from tuneline.artifacts import TrainedDir, step_output
from tuneline.cards import adapter_card, write_card
from tuneline.config import SFTConfig
from tuneline.dashboard import Report, loss_curve_report
from tuneline.model.base import BaseModelRef


@step(cache_policy=code_cache(__name__), output_materializers={"sft_adapter": DirectoryMaterializer})
def train_sft(
    base: BaseModelRef, task_data: pd.DataFrame, config: SFTConfig, max_tokens: int = 512,
    checkpoint_artifacts: bool | None = None, keep_checkpoints: int = 2,
) -> tuple[Annotated[TrainedDir, "sft_adapter"], Annotated[Report, "sft_loss_curve"]]:
    from tuneline.train.sft import train

    base = base.ensure()
    with step_output("sft-adapter") as out:  # deleted once the artifact store holds it
        res = run_training(train, base, task_data[task_data.split == "train"].to_dict("records"), config, out,
                           max_tokens, mirror=mirror(checkpoint_artifacts, keep_checkpoints),
                           eval_records=task_data[task_data.split == "eval"].to_dict("records"))
    log(res.metadata())  # the metrics, seed, data hash, base sha256 and library versions
    log_training("sft", config.model_dump(mode="json"), res.history, res.metrics, res.reproducibility())
    # method: auto is resolved by train() on this machine; the adapter records what actually trained.
    adapter = TrainedDir(path=str(out), base=base, kind="sft", method=res.metrics["method"], metrics=res.metadata())
    write_card(out, adapter_card(base, out, "sft", adapter.method, about(task_data), res.metrics))
    return adapter, loss_curve_report(res.history, "SFT loss")
