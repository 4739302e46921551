"""RL from the SFT adapter on the tiny model (dpo.loss_type grpo | rloo, TRL's GRPOTrainer / RLOOTrainer): GRPO with
the task metric as the reward moves the model toward the rewarded answer; RLOO against a trained reward model gives
an adapter the evaluation loads.

    .venv/bin/pytest -q tests/integration/test_rl_trainers.py
"""

import pytest
import torch
from peft import PeftModel

from tuneline.config import DPOConfig, RewardModelConfig, SFTConfig
from tuneline.eval.task import score_task
from tuneline.model.adapters import align_logits, is_adapter_dir, load_adapter, load_full
from tuneline.model.base import load_model
from tuneline.train.dpo import Pair
from tuneline.train.dpo import train as train_dpo  # the dispatch the pipeline's train_dpo step goes through
from tuneline.train.reward import train as train_reward
from tuneline.train.sft import train as train_sft


def record(i: int, answer: str) -> dict:
    return {"id": f"toy:{i}", "prompt": [{"role": "user", "content": f"say a word {i}"}], "assistant": answer}


@pytest.fixture(scope="module")
def sft_full(tiny_ref, tmp_path_factory):
    """A full-weight SFT model whose first answer token is mostly 'no', sometimes 'yes' (p_yes ~0.05 measured): the
    RL has both to choose from. Full fine-tuning, because LoRA cannot lift the random tiny model's near-uniform output (its
    lm_head is not adapted) in a few steps. Its own checkpoint root: a module fixture cannot use the monkeypatch."""
    from tuneline.train import checkpoints

    root = tmp_path_factory.mktemp("rl")
    saved, checkpoints.CHECKPOINT_ROOT = checkpoints.CHECKPOINT_ROOT, root / "ckpt"
    try:
        rows = [record(i, ["yes", "no"][i % 2]) for i in range(16)]
        train_sft(tiny_ref, rows, SFTConfig(method="full", max_steps=5, batch_size=8, learning_rate=8e-2,
                                            lr_scheduler="constant", warmup_ratio=0, eval_steps=None), root / "sft")
    finally:
        checkpoints.CHECKPOINT_ROOT = saved
    return str(root / "sft")


@torch.no_grad()
def p_yes(model, tok, rows) -> float:
    """Mean probability of 'yes' as the first answer token: the expected exact-match reward of the toy task."""
    yes = tok("yes", add_special_tokens=False).input_ids[0]
    probs = []
    for r in rows:
        ids = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        probs.append(torch.softmax(model(input_ids=ids["input_ids"]).logits[0, -1].float(), -1)[yes].item())
    return sum(probs) / len(probs)


def dir_p_yes(tiny_ref, tok, path, rows) -> float:
    """p_yes of a trained dir, loaded as the evaluation loads it (an adapter on the base, or a full model)."""
    model = load_adapter(load_model(tiny_ref), path) if is_adapter_dir(path) else load_full(path)
    return p_yes(model.eval(), tok, rows)


def test_grpo_on_the_task_metric_raises_the_reward(tiny_ref, tiny_tok, sft_full, tmp_path, isolated_checkpoints):
    prompts = [record(100 + i, "yes") for i in range(4)]  # gold is always 'yes': exact_match rewards only it
    cfg = DPOConfig(loss_type="grpo", reward="task_metric", sft_weight=0, num_generations=4, batch_size=8,
                    max_steps=4, learning_rate=1e-2, lr_scheduler="constant", warmup_ratio=0, beta=0.01,
                    logging_steps=1)
    # One answer token: the reward is 1 exactly when it is 'yes', so p_yes is the expected reward.
    res = train_dpo(tiny_ref, sft_full, "full", prompts, [], cfg, tmp_path / "grpo", max_new_tokens=1)
    m = res.metrics
    assert (m["rl_reward"], m["rl_metric"], m["rl_prompts"], m["steps"]) == ("task_metric", "exact_match", 4, 4)
    assert m["reward_first"] is not None and m["reward_last"] is not None
    before, after = (dir_p_yes(tiny_ref, tiny_tok, d, prompts) for d in (sft_full, str(tmp_path / "grpo")))
    assert after > before + 0.2, (before, after, [h.get("reward") for h in res.history])  # measured: 0.05 -> 0.95


def test_rloo_against_a_reward_model_gives_an_adapter_evaluation_loads(tiny_ref, tiny_tok, tmp_path,
                                                                      isolated_checkpoints):
    pairs = [Pair(prompt=record(i, "")["prompt"], chosen="yes", rejected="no", origin=f"toy:{i}") for i in range(8)]
    rm = RewardModelConfig(enabled=True, r=8, alpha=16, learning_rate=5e-3, max_steps=4, batch_size=4,
                           heldout_fraction=0.25)
    assert train_reward(tiny_ref, pairs, rm, tmp_path / "rm").metrics["heldout_reward_accuracy"] is not None
    prompts = [record(200 + i, "yes") for i in range(2)]
    sft = tmp_path / "sft"  # a LoRA SFT adapter (one step): the RL stage trains it further as an adapter
    train_sft(tiny_ref, prompts, SFTConfig(max_steps=1, batch_size=2, eval_steps=None), sft)
    cfg = DPOConfig(loss_type="rloo", sft_weight=0, num_generations=2, batch_size=4, max_steps=2, learning_rate=1e-2,
                    logging_steps=1)
    res = train_dpo(tiny_ref, str(sft), "lora", prompts, [], cfg, tmp_path / "rloo", max_new_tokens=2,
                    reward_dir=str(tmp_path / "rm"))
    assert (res.metrics["rl_reward"], res.metrics["steps"]) == ("reward_model", 2)
    assert is_adapter_dir(tmp_path / "rloo") and not (tmp_path / "rloo" / "ref").exists()
    # As tuneline.eval.evaluate loads a candidate: the adapter on the base, then generated answers scored.
    model = align_logits(load_adapter(load_model(tiny_ref), tmp_path / "rloo", adapter_name="rloo"))
    result = score_task(model, tiny_tok, prompts, max_new_tokens=2, batch_size=2)
    assert result.n == 2 and 0 <= result.score <= 1
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        before = PeftModel.from_pretrained(load_model(tiny_ref), sft)
        assert not torch.allclose(before(ids).logits, model(ids).logits), "RLOO changed nothing"
