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
