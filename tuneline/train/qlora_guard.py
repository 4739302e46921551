"""Guard QLoRA training against bitsandbytes' CPU repacking of 4-bit weights.

The trap (bitsandbytes 0.50.x on CPUs with AVX512-BF16): `Linear4bit.forward` in eval mode, on an
input without grad (any `torch.no_grad()` evaluation or generation), converts its weight once, in
place, to a CPU-only packed layout (`quant_state.packing_format_for_cpu = True`) for a fused bf16
inference kernel. From then on every forward, training ones included, goes through the custom op
`bitsandbytes::gemv_4bit`, which has no autograd kernel: no gradient flows back through the frozen
base weights, only through the residual stream and the LoRA branches. Training still runs and the
loss still falls, but the LoRA gradients are wrong (measured on the tiny model: 45 % relative error
overall, up to 60 % per tensor, vs 0.0 for a freshly loaded model; see tests/integration/test_qlora_guard.py).
torch prints one UserWarning ("an autograd kernel was not registered ...") and nothing else.

Where it bites in tuneline: DPO on a QLoRA SFT adapter generates (mines mistakes) and scores
held-out pairs before training; an evaluation of the 4-bit base before SFT; `Trainer.evaluate`
between training steps. Both trainers guard the model where they load it (`guarded`), again after
DPO's mining, and keep `Guard4bitCallback` in their callbacks (`guard_callbacks`);
tests/integration/test_qlora_guard_wired.py trains both through their entry points and checks it.

The guard, `guard_4bit(model)`, right after loading a 4-bit model and again before training:
1. converts every already repacked weight back to the standard NF4 layout (bitsandbytes' own
   inverse, bit-exact: the gradients then equal a fresh model's exactly), and
2. turns the repacking off on every `Linear4bit` (`support_avx512bf16_for_cpu = False`), so later
   evaluation forwards take the dequantize + matmul path, which has a backward.
It is idempotent and a no-op on models without bitsandbytes 4-bit layers (and on GPU, where the
repack never happens). `Guard4bitCallback` re-applies it at every training step, so no step trains
on a repacked weight (unpacking it), for trainers that evaluate mid-run.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def _linear4bit_modules(model):
    try:
        import bitsandbytes as bnb
    except ImportError:  # no bitsandbytes, no 4-bit layers
        return []
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, bnb.nn.Linear4bit)]


def is_repacked(module) -> bool:
    qs = getattr(module.weight, "quant_state", None)
    return bool(getattr(qs, "packing_format_for_cpu", False))


def repacked_modules(model) -> list[str]:
    """Names of the 4-bit layers whose weight is in bitsandbytes' CPU inference layout (no backward)."""
    return [name for name, mod in _linear4bit_modules(model) if is_repacked(mod)]


def guard_4bit(model) -> int:
    """Undo any CPU repack of 4-bit weights and stop it from happening again; returns how many layers
    were unpacked. Call it after loading a 4-bit model and before training on it."""
    unpacked = 0
    for _, mod in _linear4bit_modules(model):  # none without bitsandbytes: nothing to import then
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        mod.support_avx512bf16_for_cpu = False
        if is_repacked(mod):
            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                mod.weight.data, mod.weight.quant_state)
            mod.quant_state = mod.weight.quant_state
            unpacked += 1
    return unpacked


def guarded(model):
    """`guard_4bit(model)`, then the model: for the lines that load a 4-bit model for training."""
    guard_4bit(model)
    return model


def guard_callbacks(model) -> list[TrainerCallback]:
    """The callbacks a trainer of `model` needs: the guard where it has 4-bit layers, none otherwise."""
    return [Guard4bitCallback()] if _linear4bit_modules(model) else []


class Guard4bitCallback(TrainerCallback):
    """Keeps the guard on for a whole run: applies it at train start and checks it at every step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            guard_4bit(model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and (n := guard_4bit(model)):
            logger.warning("tuneline: %d 4-bit layers had been repacked for CPU inference before step %d; "
                           "unpacked them so the gradients stay right", n, state.global_step + 1)
