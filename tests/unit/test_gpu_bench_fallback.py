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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is what runs without CUDA")
def test_a_bare_machine_runs_from_the_shapes_dir_alone(tmp_path, capsys, bench_module, monkeypatch):
    """What travels to a device machine instead of the 94 MB GGUF: the tokenizer, the config and the rows."""
    bench = bench_module("gpu_bench")
    shapes = tmp_path / "shapes"
    bench.main(["--write-shapes", str(shapes)])
    assert sum(f.stat().st_size for f in shapes.iterdir()) < 8 * 2**20, sorted(shapes.iterdir())
    rows = bench.json.loads((shapes / bench.ROWS_FILE).read_text())
    assert len(rows) > 1000 and {r["split"] for r in rows} == {"train"}
    monkeypatch.setattr(bench.tempfile, "gettempdir", lambda: str(tmp_path))  # the random models land here
    results = bench.main(["--models", "small", "--steps", "2", "--batch", "2,3", "--padded", "--shapes", str(shapes)])
    assert results["small/lora"]["tokens_per_s"] > 0 and results["small/lora@b3"]["tokens_per_s"] > 0
    assert (tmp_path / "tuneline-gpu-bench-small" / "config.json").exists()
    assert "small/lora@b3" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is what runs without CUDA")
def test_long_rows_checkpointing_and_the_profile(tmp_path, capsys, bench_module, monkeypatch):
    """--seq joins questions into rows of at most N tokens (the answer kept, so a row is never cut to nothing),
    --gradient-checkpointing reaches the trainer, --profile prints the top operators."""
    bench = bench_module("gpu_bench")
    results = bench.main(["--models", "small", "--steps", "2", "--batch", "2", "--methods", "lora", "--seq", "128",
                          "--padded", "--gradient-checkpointing", "--profile"])
    lora = results["small/lora"]
    assert lora["checkpointing"] and lora["tokens_per_step"] > 2 * 64 and "small/qlora" not in results
    assert "Self CPU time total" in capsys.readouterr().out
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bench.model_ref("small").path)
    rows = [{"prompt": bench.json.dumps([{"role": "user", "content": f"question number {i} about my card"}]),
             "assistant": f"label_{i}"} for i in range(20)]
    long = bench.long_rows(rows, 40, tok, count=5)
    assert len(long) == 5
    for row in long:
        text = bench.json.loads(row["prompt"])[-1]["content"]
        assert "\n" in text and len(tok(text)["input_ids"]) <= 40 and row["assistant"].startswith("label_")
