"""bench/gpu.sh's CPU fallback: the LoRA/QLoRA table on a small random config, QLoRA skipped with its reason.

    .venv/bin/pytest -q tests/unit/test_gpu_bench_fallback.py
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is what runs without CUDA")
def test_cpu_fallback_prints_the_table(capsys, bench_module):
    results = bench_module("gpu_bench").main(["--models", "small", "--steps", "2", "--batch", "2"])
    out = capsys.readouterr().out
    assert "device cpu: peak" in out and "GFLOP/s" in out
    lora = results["small/lora"]
    assert lora["device"] == "cpu" and lora["tokens_per_s"] > 0 and lora["peak_mb"] is not None
    assert 0 < lora["mfu"] < 1 and lora["loss"] is not None
    assert "paged" not in lora["optim"]  # bitsandbytes pages only on CUDA
    assert results["small/qlora"]["skipped"].startswith("no CUDA")
    assert "small/qlora" in out and "skipped: no CUDA" in out


def test_gpu_sh_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")], check=True)
