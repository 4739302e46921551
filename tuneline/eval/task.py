"""Batched greedy generation and the task metric for chat records.

    result = score_task(model, tokenizer, eval_rows, max_new_tokens=16, batch_size=32, metric="token_f1")
    result.score, result.per_item   # the mean, and one score per row in input order

`tuneline evaluate configs/default.yaml` scores the base and every candidate this way (the metric is
evaluate.metric, any tuneline.eval.scoring.METRICS name). Prompts are left-padded and sorted by
length so a batch wastes few pad tokens; results come back in the input order.

metric "perplexity" (data.shape text, continued pretraining) generates nothing: `score` is the perplexity of
the held-out documents (tuneline.eval.perplexity, token-weighted) and `per_item` each document's mean
next-token NLL, so candidates pair document by document; lower is better (scoring.gain turns it round).
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel

from tuneline.data.records import messages
from tuneline.eval.perplexity import perplexity
from tuneline.eval.scoring import PERPLEXITY, check_metric, score_items
from tuneline.progress import progress


class TaskResult(BaseModel):
    score: float  # mean of per_item under `metric` (exact match, token F1, ROUGE...); perplexity: token-weighted
    n: int
    per_item: list[float]
    item_ids: list[str]
    predictions: list[str]
    seconds: float
    metric: str = "exact_match"
    # Per item, for the report's examples (a few predictions beside the gold answers): the gold answer and the
    # prompt's last user turn. Empty where a result was built without them (exports, perplexity).
    references: list[str] = []
    prompts: list[str] = []


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
    if metric == PERPLEXITY:
        return score_documents(model, tokenizer, records, batch_size)
    check_metric(metric)  # fail before generating, not after
    t0 = time.perf_counter()
    chats = [messages(r, with_answer=False) for r in records]
    preds = generate(model, tokenizer, chats, max_new_tokens, batch_size)
    golds = [r["assistant"] for r in records]
    scores = score_items(preds, golds, metric)
    return TaskResult(
        score=sum(scores) / max(len(scores), 1), n=len(scores), per_item=scores,
        item_ids=[r["id"] for r in records], predictions=preds, seconds=time.perf_counter() - t0, metric=metric,
        references=golds, prompts=[c[-1]["content"] if c else "" for c in chats],
    )


# Documents per perplexity batch: the logits of a batch are (docs x tokens x vocabulary) floats.
DOCUMENT_BATCH = 8


def documents(records: list[dict]) -> list[str]:
    """The held-out documents of text records (shape text: the document is the record's answer)."""
    if bad := [r["id"] for r in records if r.get("shape", "text") != "text"][:3]:
        raise ValueError(f"metric perplexity scores documents (data.shape text), but rows {bad} are "
                         f"{records[0].get('shape')}: set evaluate.metric to a metric for answers")
    return [r["assistant"] for r in records]


def score_documents(model, tokenizer, records: list[dict], batch_size: int = DOCUMENT_BATCH) -> TaskResult:
    """Held-out perplexity of text records: the general-text perplexity code on the task's own documents."""
    res = perplexity(model, tokenizer, documents(records), min(batch_size, DOCUMENT_BATCH))
    return TaskResult(score=res.ppl, n=len(res.per_item), per_item=res.per_item, item_ids=[r["id"] for r in records],
                      predictions=[], seconds=res.seconds, metric=PERPLEXITY)
