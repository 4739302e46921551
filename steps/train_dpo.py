"""Step: DPO from the SFT adapter (the SFT model is the reference); outputs the DPO adapter.

Mining generates data.max_new_tokens tokens as the data step resolved it (carried on task_data) and judges the
answers by `metric` (evaluate.metric, passed by the pipeline) with dpo.min_margin. dpo.loss_type rloo | grpo is RL
(tuneline.train.rl): it samples answers and scores them by `metric` (dpo.reward: task_metric) or by `reward_model`
(the train_reward step's output, dpo.reward: reward_model)."""

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
from tuneline.config import RL_LOSSES, DPOConfig
from tuneline.dashboard import Report, loss_curve_report
from tuneline.data.generation import carried_length
from tuneline.model.base import BaseModelRef


@step(cache_policy=code_cache(__name__), output_materializers={"dpo_adapter": DirectoryMaterializer})
def train_dpo(
    base: BaseModelRef, sft_adapter: TrainedDir, task_data: pd.DataFrame, preference_data: pd.DataFrame,
    config: DPOConfig, checkpoint_artifacts: bool | None = None, metric: str = "exact_match", keep_checkpoints: int = 2,
    reward_model: TrainedDir | None = None,
) -> tuple[Annotated[TrainedDir, "dpo_adapter"], Annotated[Report, "dpo_loss_curve"]]:
    from tuneline.train.dpo import train

    base = base.ensure()
    config = config.after_sft(bool(sft_adapter.metrics.get("gradient_checkpointing")))
    mining = task_data[task_data.split == "mining"].to_dict("records")
    with step_output("dpo-adapter") as out:  # deleted once the artifact store holds it
        res = run_training(train, base, sft_adapter.path, sft_adapter.method, mining, preference_data.to_dict("records"),
                           config, out, carried_length(task_data), config.mining_batch_size,
                           mirror=mirror(checkpoint_artifacts, keep_checkpoints), metric=metric,
                           reward_dir=reward_model.path if reward_model else None)
    log(res.metadata())  # the metrics, seed, data hash, base sha256 and library versions
    log_training("dpo", config.model_dump(mode="json"), res.history, res.metrics, res.reproducibility())
    adapter = TrainedDir(path=str(out), base=base, kind="dpo", method=sft_adapter.method,
                         parent=sft_adapter.path, metrics=res.metadata())
    write_card(out, adapter_card(base, out, "dpo", adapter.method, about(task_data, preference_data), res.metrics))
    name = config.loss_type.upper() if config.loss_type in RL_LOSSES else "DPO"  # RL: the reward is in the metadata
    return adapter, loss_curve_report(res.history, f"{name} loss")
