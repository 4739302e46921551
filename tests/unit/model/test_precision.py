"""The one bf16 decision: explicit settings win, 'auto' follows the GPU planned for or this machine."""

import torch

from tuneline.model import precision
from tuneline.model.precision import use_bf16


def test_explicit_settings_win():
    assert use_bf16("true") and not use_bf16("false")
    assert not use_bf16("false", for_gpu=True)


def test_auto_plans_bf16_for_a_gpu_and_follows_the_host_otherwise(monkeypatch):
    assert use_bf16("auto", for_gpu=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flag in (True, False):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: flag)
        assert use_bf16("auto") is flag
    assert precision.cuda_bf16() is False  # QLoRA computes in fp32 without a CUDA GPU


def test_a_frozen_base_trains_in_bf16_on_a_bf16_gpu_only():
    from tuneline.model.precision import training_dtype

    assert training_dtype(bf16=True, full_weight=False, on_gpu=True) == "bfloat16"
    assert training_dtype(bf16=True, full_weight=False, on_gpu=False) == "float32"  # CPU: fp32 under autocast
    assert training_dtype(bf16=True, full_weight=True, on_gpu=True) == "float32"  # master weights stay fp32
    assert training_dtype(bf16=False, full_weight=False, on_gpu=True) == "float32"


def test_padding_free_training_leaves_cudnn_attention_out_on_cuda(monkeypatch):
    from tuneline.model.precision import padding_free_attention

    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    padding_free_attention(False)
    assert calls == []  # padded batches keep every backend
    padding_free_attention(True)
    assert calls == [False]


def _weight_casts(model, x, runs: int) -> int:
    """How many fp32 -> bf16 casts of the model's weights `runs` forwards under one autocast context make."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    weights = {p.data_ptr() for p in model.parameters()}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in weights:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), Count():
        for _ in range(runs):
            model(x)
    return Count.n


def test_cached_casts_casts_frozen_weights_once_per_autocast_context():
    import torch

    from tuneline.model.precision import cached_casts

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)).requires_grad_(False)
    x = torch.randn(2, 8)
    assert _weight_casts(model, x, 3) == 12, "frozen: autocast casts the 4 weights and biases at every forward"
    with torch.autocast("cpu", dtype=torch.bfloat16), cached_casts(model):
        assert _weight_casts(model, x, 3) == 4
    assert not any(p.requires_grad for p in model.parameters()), "restored afterwards"
    with cached_casts(model):  # no autocast here: nothing to cache, nothing marked
        assert not any(p.requires_grad for p in model.parameters())
