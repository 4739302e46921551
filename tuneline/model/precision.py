"""Whether tuneline computes in bf16: one decision for training autocast, the memory planner and QLoRA.

    from tuneline.model.precision import use_bf16
    use_bf16(cfg.sft.bf16)                  # 'auto' | 'true' | 'false' -> bool for this machine
    use_bf16("auto", for_gpu=True)          # planning for a GPU that is not this machine's
"""

from __future__ import annotations

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
