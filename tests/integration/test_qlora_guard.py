"""The QLoRA CPU trap, compared on GRADIENTS (the loss does not show it).

bitsandbytes 0.50.x, CPU with AVX512-BF16: an eval-mode no-grad forward on a 4-bit model repacks
the weights in place for a fused inference kernel that has no backward; training after it gets
wrong LoRA gradients while the loss is unchanged. Measured here on the tiny model (2 layers,
hidden 64, LoRA r8 on all linear layers, one batch of 2x24 tokens):

    gradients vs a float model holding the dequantized NF4 weights (global relative L2 error)
    fresh 4-bit model                                   0.0
    eval forward first, no guard                        0.446   (worst tensor 0.60; loss equal to 4e-6)
    guard_4bit at load, then eval forward               0.0
    eval forward, then guard_4bit (unpacks)             0.0013  (the repack rounded absmax to bf16)

On a CPU without AVX512-BF16 (or on GPU) nothing is repacked and these tests check that the
gradients match the float reference; the trap-reproduction test is skipped there.
"""

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, has_avx512bf16
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from tuneline.model.base import load_model
from tuneline.train.qlora_guard import Guard4bitCallback, guard_4bit, repacked_modules

IDS = torch.randint(10, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
EXACT = 1e-5  # fp32 vs fp32 on the same dequantized weights: equal up to summation order
AVX512_BF16 = bool(has_avx512bf16())


def _with_lora(model):
    """LoRA as tuneline's SFT wraps a QLoRA base; B initialised randomly (not zeros) so that the
    lora_A gradients are non-zero on the first step too and both halves are compared."""
    model.config.use_cache = False
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))


def _grads(model) -> tuple[float, dict[str, torch.Tensor]]:
    model = _with_lora(model)
    model.train()
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _eval_forward(model):
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS)
    model.train()
    return model


def _rel(got: dict, want: dict) -> float:
    diff = torch.cat([(got[k] - want[k]).flatten() for k in want]).norm()
    return (diff / torch.cat([want[k].flatten() for k in want]).norm()).item()


@pytest.fixture(scope="module")
def reference(tiny_ref):
    """Gradients of a float model whose linear weights are the dequantized NF4 weights."""
    q = load_model(tiny_ref, quantize_4bit=True)
    flt = load_model(tiny_ref)
    sd = flt.state_dict()
    with torch.no_grad():
        for name, mod in q.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                sd[name + ".weight"].copy_(dequantize_4bit(mod.weight.data, mod.weight.quant_state).float())
    return _grads(flt)


def test_fresh_4bit_model_matches_the_float_reference(tiny_ref, reference):
    _, grads = _grads(load_model(tiny_ref, quantize_4bit=True))
    assert _rel(grads, reference[1]) < EXACT


def test_guarded_model_keeps_exact_gradients_after_an_eval_forward(tiny_ref, reference):
    """Fails without guard_4bit on an AVX512-BF16 CPU (relative error 0.45)."""
    model = load_model(tiny_ref, quantize_4bit=True)
    guard_4bit(model)
    _eval_forward(model)
    assert repacked_modules(model) == []
    _, grads = _grads(model)
    assert _rel(grads, reference[1]) < EXACT


@pytest.mark.skipif(not AVX512_BF16, reason="the repack only happens on CPUs with AVX512-BF16")
def test_trap_reproduces_without_the_guard(tiny_ref, reference):
    """The trap itself: wrong gradients, same loss. If this starts failing, bitsandbytes fixed it."""
    model = _eval_forward(load_model(tiny_ref, quantize_4bit=True))
    assert len(repacked_modules(model)) == 14  # 2 layers x 7 linear layers
    loss, grads = _grads(model)
    assert _rel(grads, reference[1]) > 0.1
    assert abs(loss - reference[0]) < 1e-3, "the loss does not reveal the trap"


def test_guard_unpacks_an_already_repacked_model(tiny_ref, reference):
    model = _eval_forward(load_model(tiny_ref, quantize_4bit=True))
    assert guard_4bit(model) == (14 if AVX512_BF16 else 0)
    assert repacked_modules(model) == [] and guard_4bit(model) == 0
    _, grads = _grads(model)
    # Not exact: the repack rounded each block's absmax to bf16 (measured 0.0013).
    assert _rel(grads, reference[1]) < 1e-2


def test_callback_unpacks_before_each_step(tiny_ref):
    model = _eval_forward(load_model(tiny_ref, quantize_4bit=True))
    from transformers import TrainerControl, TrainerState

    Guard4bitCallback().on_step_begin(None, TrainerState(), TrainerControl(), model=model)
    assert repacked_modules(model) == []
    assert all(not m.support_avx512bf16_for_cpu for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu"))
