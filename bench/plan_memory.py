"""The memory planner against measured peak memory: estimated / measured, per model and method.

    .venv/bin/python bench/plan_memory.py                       # tiny + SmolLM2-135M, lora/qlora/full, CPU
    .venv/bin/python bench/plan_memory.py --models default --methods lora qlora --batch-size 8 --seq-len 96

Each measurement runs in a fresh process (freed memory of an earlier one would hide the next peak):
3 plain training steps on random tokens (`tuneline.train.plan.measure`), the dynamic part (everything but
the weights) as CUDA max_memory_allocated on a GPU, else the peak RSS delta on CPU. A ratio of 1.0 is
a perfect estimate; above 1, the planner is conservative.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r'''
import json, sys
from tuneline.model.base import prepare
from tuneline.config import BaseModelConfig, TunelineConfig
from tuneline.train.plan import Workload, measure
source, method, batch, seq, bf16 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
src = TunelineConfig().base_model if source == "default" else BaseModelConfig(source=source)
print("RESULT " + json.dumps(measure(prepare(src), method, Workload(batch_size=batch, seq_len=seq, r=16, bf16=bf16))))
'''


def run(model: str, method: str, batch: int, seq: int, bf16: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, model, method, str(batch), str(seq), "1" if bf16 else "0"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        return {"model": model, "method": method, "error": p.stderr.strip().splitlines()[-1]}
    out = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:])
    return {"model": model, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "default"])
    ap.add_argument("--methods", nargs="+", default=["lora", "qlora", "full"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = ap.parse_args()
    print(f"{'model':8} {'method':6} {'device':22} {'estimated MB':>12} {'measured MB':>12} {'est/meas':>9} {'total est/meas':>15}")
    for model in args.models:
        for method in args.methods:
            r = run(model, method, args.batch_size, args.seq_len, not args.fp32)
            if "error" in r:
                print(f"{model:8} {method:6} error: {r['error']}")
                continue
            print(f"{model:8} {method:6} {r['device']:22} {r['estimated_mb']:12.1f} {r['measured_mb']:12.1f} "
                  f"{r['ratio']:9.2f} {r['total_ratio']:15.2f}", flush=True)


if __name__ == "__main__":
    main()
