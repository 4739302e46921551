"""Whether tuneline computes in bf16: one decision for training autocast, the memory planner and QLoRA.

    from tuneline.model.precision import use_bf16
    use_bf16(cfg.sft.bf16)                  # 'auto' | 'true' | 'false' -> bool for this machine
    use_bf16("auto", for_gpu=True)          # planning for a GPU that is not this machine's
    with eval_autocast(cfg.evaluate.bf16): ...   # a whole evaluation's forward passes in bf16
    training_dtype(use_bf16(cfg.sft.bf16), method.full_weight)   # the dtype the base is loaded in to train
    padding_free_attention(cfg.sft.padding_free)   # CUDA: no cuDNN SDPA for packed batches
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


def cuda_bf16() -> bool:
    """A CUDA GPU that runs bf16 here (QLoRA's 4-bit matmuls compute in bf16 on it, fp32 elsewhere)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast then runs matmuls about 2x faster than fp32 on CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(setting: str = "auto", for_gpu: bool = False) -> bool:
    """bf16 autocast for a `bf16:` setting. auto: yes on a GPU being planned for (bf16 GPUs are the norm),
    else what this host does: its CUDA GPU if it has one, else its CPU flags."""
    if setting != "auto":
        return setting == "true"
    if for_gpu:
        return True
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def training_dtype(bf16: bool, full_weight: bool, on_gpu: bool | None = None) -> str:
    """The dtype a base model is loaded in for training (`on_gpu`: default, whether this host has CUDA). On a
    GPU under bf16 a frozen base (LoRA and the other adapters) is loaded in bf16, as axolotl and TRL's guides
    load it: half the weight memory (1B LoRA, 64 rows, H200: 14.1 -> 10.2 GB). Elsewhere it stays fp32 under
    bf16 autocast: the matmuls run in bf16 either way, the fp32 residual stream keeps the CPU's results those
    of fp32 training, and a bf16 base ran no faster on the 2-core CPU (261 against 272 tokens/s). The adapter's
    own weights stay fp32 (PEFT upcasts them); weights the optimizer updates (full, bitfit, galore) stay fp32."""
    on_gpu = cuda_bf16() if on_gpu is None else on_gpu
    return "bfloat16" if bf16 and on_gpu and not full_weight else "float32"


def padding_free_attention(padding_free: bool) -> None:
    """On CUDA, padding-free training leaves SDPA's cuDNN backend out. A packed batch has a new length every step,
    and cuDNN builds an execution plan on the host for each new shape: on an H200 that was 16-20 ms per attention
    call, 2/3 of a 1B LoRA step (bench/gpu_bench.py --profile), where the memory-efficient kernel takes none."""
    import torch

    if padding_free and torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


@contextlib.contextmanager
def eval_autocast(setting: str, four_bit: bool = False) -> Iterator[bool]:
    """bf16 autocast around a whole evaluation where `use_bf16(setting)` (yields whether it is on). One context for
    all of it, not one per forward: autocast casts each weight once and keeps the copy while the context lasts,
    so a generation's decoding steps reuse it (weights that require grad; frozen ones: `cached_casts`). On the
    2-core CPU: 96 task rows 8.5 -> 5.2 s, MMLU 1.8x, the metric within a row of fp32's (docs/evaluation.md).
    General-text perplexity opts out (perplexity.perplexities: the export gate's +0.5 % limit needs it exact).
    `four_bit` (a QLoRA base): bitsandbytes keeps its compute dtype."""
    import torch

    if not use_bf16(setting) or four_bit:
        yield False
        return
    with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16):
        yield True


@contextlib.contextmanager
def cached_casts(model) -> Iterator[None]:
    """Inside, autocast casts each frozen fp32 weight of `model` to bf16 once, not at every forward.

    Autocast keeps its bf16 copy only of leaf tensors that require grad; a PeftModel's base and its adapters in
    inference mode do not, so every decoding step cast them all again. Marked for the block (generation runs without
    gradients) they are cast once per autocast context, the same values: on the default run's SFT adapter, 64 rows
    6.3 -> 5.0 s, the same answers. Outside autocast, or with nothing frozen, nothing changes."""
    import torch

    device = next(model.parameters()).device.type
    frozen = [p for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32]
    if not torch.is_autocast_enabled(device) or not frozen:
        yield
        return
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)

