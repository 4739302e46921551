"""Batched greedy generation and the task metric for chat records.

    result = score_task(model, tokenizer, eval_rows, max_new_tokens=16, batch_size=32, metric="token_f1")
    result.score, result.per_item   # the mean, and one score per row in input order

`tuneline evaluate configs/default.yaml` scores the base and every candidate this way (the metric is
evaluate.metric, any tuneline.eval.scoring.METRICS name). Prompts are left-padded and sorted by
length so a batch wastes few pad tokens; results come back in the input order.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel

from tuneline.data.records import messages
from tuneline.eval.scoring import check_metric, score_items
from tuneline.progress import progress


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
        for start in progress(range(0, len(order), batch_size), f"generating {len(prompts)} answers", "batch"):
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
    tuneline.eval.scoring metric; `score` is the mean of the per-item scores."""
    check_metric(metric)  # fail before generating, not after
    t0 = time.perf_counter()
    preds = generate(model, tokenizer, [messages(r, with_answer=False) for r in records], max_new_tokens, batch_size)
    scores = score_items(preds, [r["assistant"] for r in records], metric)
    return TaskResult(
        score=sum(scores) / max(len(scores), 1), n=len(scores), per_item=scores,
        item_ids=[r["id"] for r in records], predictions=preds, seconds=time.perf_counter() - t0, metric=metric,
    )
