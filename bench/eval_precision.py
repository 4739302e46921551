"""fp32 against bf16 autocast (`evaluate.bf16`) for the Hugging Face evaluation, interleaved in one process.

    .venv/bin/python bench/eval_precision.py MODEL_DIR [--rows 96] [--texts 100] [--repeats 2]

MODEL_DIR: a merged model dir (the merge step's output, or `tuneline merge`). Task rows are the first `--rows`
Banking77 test rows through the default prompt; general texts are evaluate.perplexity's. Each repeat runs fp32
then bf16 (`tuneline.model.precision.eval_autocast`, the evaluation's own context), so the machine's drift hits
both alike; the table gives each run's seconds and value, and the bf16/fp32 time ratio. Perplexity is measured
with autocast forced on here (the pipeline keeps it fp32: `tuneline.eval.perplexity.perplexities`), to show why.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e`


def rows(n: int) -> list[dict]:
    with (ROOT / "data" / "banking77" / "test.csv").open() as f:
        raw = list(csv.DictReader(f))[:n]
    turns = lambda r: [{"role": "system", "content": ""},  # noqa: E731
                       {"role": "user", "content": f"Classify the banking intent: {r['text']}"}]
    return [{"id": str(i), "prompt": json.dumps(turns(r)), "assistant": r["category"]} for i, r in enumerate(raw)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--texts", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.config import EvaluateConfig, PerplexityConfig
    from tuneline.eval.perplexity import general_texts, perplexities
    from tuneline.eval.task import score_task
    from tuneline.model.precision import eval_autocast

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    records = rows(args.rows)
    texts = general_texts(EvaluateConfig(perplexity=PerplexityConfig(rows=args.texts)))
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for setting in ("false", "true"):
            with eval_autocast(setting) as on:
                t = time.perf_counter()
                task = score_task(model, tok, records, 12, 32)
                seconds.setdefault(("task", setting), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                ppl = _forced(perplexities, model, tok, texts, on)
                seconds.setdefault(("perplexity", setting), []).append(time.perf_counter() - t)
            print(f"{'bf16' if on else 'fp32'}: task {task.score:.4f} ({len(records)} rows), perplexity {ppl:.4f}",
                  flush=True)
    for what in ("task", "perplexity"):
        fp32, bf16 = min(seconds[(what, "false")]), min(seconds[(what, "true")])
        print(f"{what:11} fp32 {fp32:6.1f} s   bf16 {bf16:6.1f} s   bf16/fp32 {bf16 / fp32:.2f}")


def _forced(perplexities, model, tok, texts, bf16: bool) -> float:
    """perplexities() turns autocast off inside; for the measurement, patch the model's forward to turn it on."""
    import torch

    if not bf16:
        return perplexities(model, tok, texts, None)[0].ppl
    forward = model.forward
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(forward)
    try:
        return perplexities(model, tok, texts, None)[0].ppl
    finally:
        model.forward = forward


if __name__ == "__main__":
    main()
