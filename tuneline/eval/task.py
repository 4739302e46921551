"""Batched greedy generation and task accuracy for chat records.

    python -m tuneline.eval.task configs/default.yaml            # base-model exact match on the eval rows
    python -m tuneline.eval.task configs/default.yaml token_f1   # or any tuneline.eval.scoring.METRICS name

Prompts are left-padded and sorted by length so a batch wastes few pad tokens; results come
back in the input order.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel

from tuneline.data.validate import messages
from tuneline.eval.scoring import check_metric, score_items


class TaskResult(BaseModel):
    score: float  # mean of per_item under `metric` (exact match, token F1, ROUGE...)
    n: int
    per_item: list[float]
    item_ids: list[str]
    predictions: list[str]
    seconds: float
    metric: str = "exact_match"


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions for chat conversations that end with a user turn."""
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models must be left-padded to generate in a batch
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                out[i] = text
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def score_task(
    model, tokenizer, records: list[dict], max_new_tokens: int, batch_size: int, metric: str = "exact_match"
) -> TaskResult:
    """Score generated answers on task records (dicts with user/assistant/system) with a
    tuneline.eval.scoring metric; `accuracy` is the mean of the per-item scores."""
    check_metric(metric)  # fail before generating, not after
    t0 = time.perf_counter()
    preds = generate(model, tokenizer, [messages(r, with_answer=False) for r in records], max_new_tokens, batch_size)
    scores = score_items(preds, [r["assistant"] for r in records], metric)
    return TaskResult(
        score=sum(scores) / max(len(scores), 1), n=len(scores), per_item=scores,
        item_ids=[r["id"] for r in records], predictions=preds, seconds=time.perf_counter() - t0, metric=metric,
    )


if __name__ == "__main__":
    import sys

    from tuneline.model.base import load_model, load_tokenizer, prepare
    from tuneline.config import load
    from tuneline.data.validate import validate

    cfg = load(sys.argv[1])
    ref = prepare(cfg.base_model)
    tok = load_tokenizer(ref)
    task = validate(cfg.data, tok).task
    rows = task[task.split == "eval"].to_dict("records")
    metric = sys.argv[2] if len(sys.argv) > 2 else "exact_match"
    r = score_task(load_model(ref), tok, rows, cfg.evaluate.max_new_tokens, cfg.evaluate.batch_size, metric)
    print(f"{r.metric} {r.score:.3f} on {r.n} rows in {r.seconds:.1f}s; e.g. {r.predictions[:5]}")
