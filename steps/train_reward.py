"""Step: RLHF's reward model (reward_model.enabled), trained on DPO's pairs; outputs the reward model (LoRA + head)
with its held-out pair accuracy in its metadata. train_dpo's RL stage (dpo.loss_type rloo | grpo) scores its
sampled answers with it.

A step of its own, between train_sft and train_dpo: it has its own artifact and figures, its own cache key (changing
dpo.learning_rate re-runs the RL, not the reward model) and its own retry. The pairs are mined here from the SFT
model when dpo.mine_mistakes is on (the RL stage then mines nothing: it samples its own answers)."""

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
from tuneline.config import RewardModelConfig
from tuneline.data.generation import carried_length
from tuneline.model.base import BaseModelRef


@step(cache_policy=code_cache(__name__), output_materializers={"reward_model": DirectoryMaterializer})
def train_reward(
    base: BaseModelRef, sft_adapter: TrainedDir, task_data: pd.DataFrame, preference_data: pd.DataFrame,
    config: RewardModelConfig, mine_mistakes: bool = True, min_margin: float = 0.2, mining_batch_size: int = 32,
    metric: str = "exact_match", checkpoint_artifacts: bool | None = None, keep_checkpoints: int = 2,
) -> Annotated[TrainedDir, "reward_model"]:
    from tuneline.train.reward import collect_pairs, train

    base = base.ensure()
    mining = task_data[task_data.split == "mining"].to_dict("records")
    mined, user = collect_pairs(base, sft_adapter.path, sft_adapter.method, mining, preference_data.to_dict("records"),
                                mine_mistakes, carried_length(task_data), mining_batch_size, metric, min_margin)
    with step_output("reward-model") as out:  # deleted once the artifact store holds it
        res = run_training(train, base, mined + user, config, out, mirror=mirror(checkpoint_artifacts, keep_checkpoints),
                           extra_metrics={"pairs_mined": len(mined), "pairs_user": len(user), "mining_metric": metric})
    log(res.metadata())  # held-out accuracy, pairs, seed, data hash, base sha256 and library versions
    log_training("reward_model", config.model_dump(mode="json"), res.history, res.metrics, res.reproducibility())
    model = TrainedDir(path=str(out), base=base, kind="reward", method="lora", parent=sft_adapter.path,
                       metrics=res.metadata())
    write_card(out, adapter_card(base, out, "reward", "lora", about(task_data, preference_data), res.metrics))
    return model
