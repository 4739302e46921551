"""DPO checkpoints belong to the SFT result they started from: with the same user pairs (no mining), a
re-trained SFT adapter starts DPO afresh, and the same adapter again resumes its finished checkpoint, a real
Trainer checkpoint that `checkpoint_complete` accepts (the "ref" adapter in its subdir included).

Two random LoRA adapters on the tiny model stand in for two SFT runs; DPO trains 2 steps (about 10 s each).
"""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tuneline.config import DPOConfig
from tuneline.model.base import load_model
from tuneline.train.checkpoints import checkpoint_complete
from tuneline.train.dpo import train

PREFS = [
    {"id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": q}]), "chosen": c, "rejected": r}
    for i, (q, c, r) in enumerate(
        [("Say hi", "Hi!", "No."), ("Name a colour", "Blue.", "Seven."), ("Count to two", "One, two.", "Three.")]
    )
]
CFG = DPOConfig(mine_mistakes=False, batch_size=2, max_length=64, learning_rate=1e-2, max_steps=2, bf16="false")


@pytest.fixture(scope="module")
def sft_adapters(tiny_ref, tmp_path_factory):
    """Two SFT results that differ only in their weights (random non-zero LoRA B)."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = get_peft_model(
            load_model(tiny_ref),
            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
        )
        paths.append(str(tmp_path_factory.mktemp(f"sft{seed}")))
        model.save_pretrained(paths[-1])
    return paths


def test_a_changed_sft_adapter_starts_dpo_afresh(tiny_ref, sft_adapters, tmp_path, isolated_checkpoints):
    first_sft, retrained_sft = sft_adapters
    first = train(tiny_ref, first_sft, "lora", [], PREFS, CFG, tmp_path / "dpo-1")
    assert first.metrics["resumed_from"] is None and first.metrics["steps"] == CFG.max_steps
    (run,) = isolated_checkpoints.glob("dpo-*")
    assert checkpoint_complete(run / f"checkpoint-{CFG.max_steps}")

    other = train(tiny_ref, retrained_sft, "lora", [], PREFS, CFG, tmp_path / "dpo-2")
    assert other.metrics["resumed_from"] is None, "DPO resumed a checkpoint of another SFT adapter"
    assert len(list(isolated_checkpoints.glob("dpo-*"))) == 2

    again = train(tiny_ref, first_sft, "lora", [], PREFS, CFG, tmp_path / "dpo-3")
    assert again.metrics["resumed_from"] == str(run / f"checkpoint-{CFG.max_steps}")
