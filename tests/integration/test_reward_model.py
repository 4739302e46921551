"""RLHF's reward model on the tiny model (TRL's RewardTrainer, LoRA + scalar head), and the config checks of the RL
stage that uses it.

    .venv/bin/pytest -q tests/integration/test_reward_model.py
"""

import pytest

from tuneline.config import DPOConfig, RewardModelConfig, TunelineConfig
from tuneline.train.dpo import Pair
from tuneline.train.reward import load_reward_model, pair_accuracy
from tuneline.train.reward import train as train_reward


def toy_pairs(n: int = 16) -> list[Pair]:
    """Separable: the chosen answer is always 'yes', the rejected always 'no', whatever the question."""
    return [Pair(prompt=[{"role": "user", "content": f"question number {i}?"}], chosen="yes", rejected="no",
                 origin=f"toy:{i}") for i in range(n)]


def test_reward_model_learns_a_separable_preference(tiny_ref, tiny_tok, tmp_path, isolated_checkpoints):
    pairs = toy_pairs()
    cfg = RewardModelConfig(enabled=True, r=8, alpha=16, learning_rate=5e-3, max_steps=10, batch_size=4,
                            heldout_fraction=0.25, logging_steps=2)
    res = train_reward(tiny_ref, pairs, cfg, tmp_path / "rm")
    m = res.metrics
    assert (m["pairs_train"], m["pairs_heldout"], m["steps"]) == (12, 4, 10)
    assert m["heldout_reward_accuracy_before"] is not None  # the random head's, reported beside the trained one
    assert m["heldout_reward_accuracy"] > 0.5 and m["heldout_reward_margin"] > 0, m
    # A random head already orders one constant pair one way or the other: training must widen the margin.
    assert m["heldout_reward_margin"] > m["heldout_reward_margin_before"] + 0.5, m
    # The saved artifact (LoRA + head) reloads to the same judgement, as the RL stage loads it.
    reloaded = load_reward_model(tiny_ref, tmp_path / "rm")
    again = pair_accuracy(reloaded, tiny_tok, pairs)
    assert again["accuracy"] > 0.5 and again["margin"] > 0


def _cfg(**sections) -> TunelineConfig:
    return TunelineConfig(**sections)


@pytest.mark.parametrize("sections, words", [
    ({"reward_model": {"enabled": True}}, "reward_model.enabled, but nothing uses it"),
    ({"dpo": {"loss_type": "rloo", "sft_weight": 0}}, "set reward_model.enabled: true"),
    ({"dpo": {"loss_type": "grpo", "sft_weight": 0, "reward": "task_metric"}, "data": {"shape": "text"},
      "evaluate": {"metric": "perplexity", "mmlu": None}}, "dpo.reward: task_metric scores sampled answers"),
    ({"dpo": {"loss_type": "grpo", "sft_weight": 0, "reward": "task_metric", "mine_mistakes": False}},
     "set dpo.mine_mistakes: true"),
])
def test_rl_combinations_that_cannot_work_are_refused_at_load(sections, words):
    with pytest.raises(ValueError) as e:
        _cfg(**sections)
    assert words in str(e.value)


def test_rl_batch_and_sft_term_are_checked():
    with pytest.raises(ValueError, match="multiple of dpo.num_generations=4: set dpo.batch_size: 8"):
        DPOConfig(loss_type="grpo", sft_weight=0, batch_size=10)
    with pytest.raises(ValueError, match="set dpo.sft_weight: 0"):
        DPOConfig(loss_type="rloo")
    ok = _cfg(dpo={"loss_type": "rloo", "sft_weight": 0}, reward_model={"enabled": True})
    assert ok.reward_model.enabled and ok.dpo.reward == "reward_model"
