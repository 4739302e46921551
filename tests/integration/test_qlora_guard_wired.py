"""QLoRA through tuneline's own SFT and DPO entry points keeps exact gradients after evaluating mid-run.

SFT evaluates every `eval_steps` under no_grad and DPO mines mistakes (generation) and scores held-out
pairs before it trains: on a CPU with AVX512-BF16, unguarded, each repacks the 4-bit weights into
bitsandbytes' inference layout, which has no backward (tuneline/train/qlora_guard.py). A probe callback,
added after the trainers' own, records at every evaluation and at the start of every step after one
how many layers are repacked, and the LoRA gradients on a fixed batch against a float model holding the
dequantized NF4 weights and the same LoRA weights (relative L2 error; 0.45 when the trap bites).
"""

import copy

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from peft import get_peft_model
from transformers import TrainerCallback

from tuneline.config import DPOConfig, SFTConfig
from tuneline.model.base import load_model
from tuneline.train import dpo, sft
from tuneline.train.qlora_guard import repacked_modules

IDS = torch.randint(10, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
EXACT = 1e-5  # fp32 vs fp32 on the same dequantized weights: equal up to summation order


def _lora_grads(model) -> dict[str, torch.Tensor]:
    """Gradients of the active ("default") adapter on IDS, dropout off; leaves no grad behind."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    model(input_ids=IDS, labels=IDS, use_cache=False).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None and ".default." in n}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads


def _float_twin(ref, peft_model):
    """The float base with the 4-bit model's dequantized weights and a copy of its "default" adapter (in the
    adapter's own dtype: TRL keeps QLoRA adapters in bf16, as the QLoRA paper does)."""
    flt = load_model(ref)
    sd = flt.state_dict()
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                key = name.removeprefix("base_model.model.").removesuffix(".base_layer") + ".weight"
                sd[key].copy_(dequantize_4bit(mod.weight.data, mod.weight.quant_state).float())
    flt.config.use_cache = False
    twin = get_peft_model(flt, copy.deepcopy(peft_model.peft_config["default"]))
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if ".default." in name:
                p.data = params[name].detach().clone()
    return twin


def _rel(got: dict, want: dict) -> float:
    assert got.keys() == want.keys() and want
    diff = torch.cat([(got[k] - want[k]).flatten() for k in want]).norm()
    return (diff / torch.cat([want[k].flatten() for k in want]).norm()).item()


class Probe(TrainerCallback):
    def __init__(self, ref):
        self.ref, self.repacked, self.errors, self.evaluated = ref, [], [], False

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.evaluated = True
        self.repacked.append(len(repacked_modules(model)))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.repacked.append(len(repacked_modules(model)))
        if self.evaluated and len(self.errors) < 2:  # two steps after an evaluation are enough
            self.errors.append(_rel(_lora_grads(model), _lora_grads(_float_twin(self.ref, model))))


@pytest.fixture()
def probe(tiny_ref, monkeypatch):
    """Appends the probe to the callbacks each trainer builds (after the guard's)."""
    p = Probe(tiny_ref)
    for module in (sft, dpo):
        real = module.mirror_callbacks
        monkeypatch.setattr(module, "mirror_callbacks", lambda ckpt, mirror, real=real: real(ckpt, mirror) + [p])
    return p


def _records(tiny_data, split):
    return tiny_data.task[tiny_data.task.split == split].to_dict("records")


# bf16 off: accelerate wraps the trained model's forward in autocast, which the float twin does not have.
QLORA = SFTConfig(method="qlora", epochs=1, max_steps=6, batch_size=4, learning_rate=5e-3, logging_steps=1,
                  eval_steps=2, eval_rows=8, bf16="false")


def test_qlora_sft_evaluates_mid_run_without_repacking_and_keeps_exact_gradients(
        tiny_ref, tiny_data, tmp_path, isolated_checkpoints, probe):
    res = sft.train(tiny_ref, _records(tiny_data, "train"), QLORA, tmp_path / "sft",
                    eval_records=_records(tiny_data, "eval"))
    assert sum("eval_loss" in h for h in res.history) >= 2, "the run did evaluate mid-training"
    assert probe.evaluated and len(probe.errors) == 2
    assert probe.repacked and max(probe.repacked) == 0, f"repacked 4-bit layers seen: {probe.repacked}"
    assert max(probe.errors) < EXACT, f"gradient error after evaluation vs the float reference: {probe.errors}"


def test_qlora_dpo_mines_and_trains_without_repacking_and_keeps_exact_gradients(
        tiny_ref, tiny_data, tmp_path, isolated_checkpoints, probe):
    sft.train(tiny_ref, _records(tiny_data, "train"), QLORA.model_copy(update={"eval_steps": None}), tmp_path / "sft")
    probe.evaluated = True  # DPO generated (mined) and scored held-out pairs before its first step
    cfg = DPOConfig(batch_size=4, max_length=96, learning_rate=1e-3, max_steps=3, logging_steps=1,
                    bf16="false")
    res = dpo.train(tiny_ref, str(tmp_path / "sft"), "qlora", _records(tiny_data, "mining"),
                    tiny_data.preferences.to_dict("records"), cfg, tmp_path / "dpo", max_new_tokens=4)
    assert res.metrics["steps"] >= 2 and len(probe.errors) == 2
    assert max(probe.repacked) == 0, f"repacked 4-bit layers seen: {probe.repacked}"
    assert max(probe.errors) < EXACT, f"gradient error after mining vs the float reference: {probe.errors}"
