"""SFT steps under glibc's malloc and under jemalloc, each in a fresh process: seconds per step as training goes on.

    .venv/bin/python bench/allocator.py                 # 120 steps of the default SFT under each, ~5 minutes
    .venv/bin/python bench/allocator.py --steps 40 --model tiny

Each allocator gets a process of its own (an allocator is chosen when a process starts: LD_PRELOAD), which builds
tuneline's SFT trainer as `train_sft` does (`bench/train_throughput.py:step_batches`: the default model, the Banking77
training rows, batch 8 padding-free, bf16 autocast where the CPU has it), collates the first N batches, then runs
them through `Trainer.training_step` plus the optimizer, the same batches in the same order under both. Printed per
block of 10 steps: seconds a step, user CPU seconds and the process's peak resident memory; then the whole run's
ratio, jemalloc over glibc. The drift within the glibc run is the point: padding-free batches change length every
step, and glibc's malloc gets slower as those allocations of ever new sizes pile up (tuneline/allocator.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without `pip install -e`
sys.path.insert(0, str(HERE))  # train_throughput: the trainer as train_sft builds it
BLOCK = 10


def steps(model: str, n: int) -> list[dict]:
    """n SFT steps in this process; one record per block of BLOCK steps."""
    import torch

    import train_throughput as tt
    from tuneline.config import BaseModelConfig, DataConfig
    from tuneline.data.validate import validate
    from tuneline.model.base import load_tokenizer, prepare

    ref = prepare(BaseModelConfig(source="tiny") if model == "tiny" else BaseModelConfig())
    task = validate(DataConfig(), load_tokenizer(ref)).task
    trainer, batches, _ = tt.step_batches(ref, task[task.split == "train"].to_dict("records"), n)
    opt = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-3)
    trainer.model.train()
    blocks, t0, ru0 = [], time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for i, batch in enumerate(batches, 1):
        trainer.training_step(trainer.model, dict(batch))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i % BLOCK == 0:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            blocks.append({"steps": i, "s_per_step": (time.perf_counter() - t0) / BLOCK,
                           "user_cpu_s": ru.ru_utime - ru0.ru_utime, "max_rss_mb": ru.ru_maxrss / 1024})
            t0, ru0 = time.perf_counter(), ru
    return blocks


def in_process(allocator: str, model: str, n: int) -> list[dict]:
    """`steps` in a fresh process under `allocator` (glibc | jemalloc)."""
    from tuneline.allocator import with_jemalloc

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "jemalloc":
        env = with_jemalloc(env)  # as tuneline.fresh_process starts training
        if "LD_PRELOAD" not in env:
            raise SystemExit("jemalloc is not installed: scripts/install_jemalloc.sh (or apt-get install libjemalloc2)")
    out = subprocess.run([sys.executable, __file__, "--child", model, str(n)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{allocator} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    if argv is None and sys.argv[1:2] == ["--child"]:
        print(json.dumps(steps(sys.argv[2], int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--steps", type=int, default=120, help="SFT steps (batch 8) per allocator")
    args = parser.parse_args(argv)
    n = max(BLOCK, args.steps // BLOCK * BLOCK)
    print(f"{n} SFT steps of the {args.model} model under each allocator, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    runs = {name: in_process(name, args.model, n) for name in ("glibc", "jemalloc")}
    print(f"{'steps':>6} " + " ".join(f"{name + ' s/step':>15} {'user CPU':>9} {'peak RSS':>9}" for name in runs))
    for row in zip(*runs.values()):
        print(f"{row[0]['steps']:>6} " + " ".join(
            f"{b['s_per_step']:>15.3f} {b['user_cpu_s']:>8.1f}s {b['max_rss_mb']:>7.0f}MB" for b in row))
    total = {name: sum(b["s_per_step"] for b in blocks) * BLOCK for name, blocks in runs.items()}
    first, last = runs["glibc"][0]["s_per_step"], runs["glibc"][-1]["s_per_step"]
    print(f"whole run: glibc {total['glibc']:.1f} s, jemalloc {total['jemalloc']:.1f} s: jemalloc "
          f"{total['glibc'] / total['jemalloc']:.2f}x as fast; glibc's last block {last / first:.2f}x its first, "
          f"jemalloc's {runs['jemalloc'][-1]['s_per_step'] / runs['jemalloc'][0]['s_per_step']:.2f}x")


if __name__ == "__main__":
    main()
