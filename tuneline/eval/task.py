"""Batched greedy generation and the task metric for chat records.

    result = score_task(model, tokenizer, eval_rows, max_new_tokens=16, batch_size=32, metric="token_f1")
    result.score, result.per_item   # the mean, and one score per row in input order

`tuneline evaluate configs/default.yaml` scores the base and every candidate this way (the metric is
evaluate.metric, any tuneline.eval.scoring.METRICS name). Prompts are left-padded and sorted by
length so a batch wastes few pad tokens; results come back in the input order.

metric "perplexity" (data.shape text, continued pretraining) generates nothing: `score` is the perplexity of
the held-out documents (tuneline.eval.perplexity, token-weighted) and `per_item` each document's mean
next-token NLL, so candidates pair document by document; lower is better (scoring.gain turns it round).

Multi-task rows (data.tasks: each row carries its `task`, `metric` and `max_new_tokens`, tuneline/data/tasks.py)
are generated with their own task's length and scored with its metric, whatever `metric` and `max_new_tokens` the
caller passes (those are for rows without a task); `score` is the mean over all rows, `tasks` each task's own
(TaskScore) and `item_tasks` every item's task, so reports and gates can pair candidates task by task.
"""

from __future__ import annotations

import math
import numbers
import time

from pydantic import BaseModel

from tuneline.data.records import messages
from tuneline.eval.perplexity import perplexity
from tuneline.eval.scoring import PERPLEXITY, check_metric, metric_name, score_items
from tuneline.model.precision import cached_casts
from tuneline.progress import progress


class TaskScore(BaseModel):
    """One task's part of a multi-task result: its metric, rows and mean score."""

    name: str
    metric: str
    n: int
    score: float
    max_new_tokens: int | None = None  # the task's generation length, as its rows carry it


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
    # Multi-task (data.tasks): every item's task, in item order, and each task's part; empty for one task.
    item_tasks: list[str] = []
    tasks: list[TaskScore] = []

    def task_items(self) -> dict[str, list[str]]:
        """Task name -> the ids of its items (multi-task; {} for one task)."""
        out: dict[str, list[str]] = {}
        for task, item in zip(self.item_tasks, self.item_ids):
            out.setdefault(task, []).append(item)
        return out


def row_task(record: dict) -> str | None:
    """The task a row belongs to (multi-task rows), or None."""
    task = record.get("task")
    return task if isinstance(task, str) and task else None


def row_metrics(records: list[dict], metric: str) -> list[str]:
    """Each row's metric: its task's (multi-task rows carry it), else `metric`."""
    return [r["metric"] if row_task(r) and isinstance(r.get("metric"), str) else metric for r in records]


def row_lengths(records: list[dict], max_new_tokens: int) -> list[int]:
    """Each row's generation length: its task's (multi-task rows carry it), else `max_new_tokens`."""
    out = []
    for r in records:
        n = r.get("max_new_tokens") if row_task(r) else None
        out.append(int(n) if isinstance(n, numbers.Real) and not math.isnan(n) and n >= 1 else max_new_tokens)
    return out


def length_groups(records: list[dict], max_new_tokens: int) -> dict[int, list[int]]:
    """Row indices by generation length (`row_lengths`), in first-appearance order: one generation pass each
    (a single group, all rows in order, for rows without a task)."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(row_lengths(records, max_new_tokens)):
        groups.setdefault(n, []).append(i)
    return groups


def generate_rows(model, tokenizer, records: list[dict], max_new_tokens: int, batch_size: int,
                  adapters: list[str] | None = None) -> list[list[str]]:
    """Greedy answers to task rows, each as long as its row allows (`row_lengths`): one generation pass per
    length; one list of answers per adapter (`generate_under`), or one for the model as it is."""
    chats = [messages(r, with_answer=False) for r in records]
    out = [[""] * len(records) for _ in adapters or [None]]
    for length, idx in length_groups(records, max_new_tokens).items():
        part = [chats[i] for i in idx]
        got = (generate_under(model, tokenizer, part, length, batch_size, adapters) if adapters
               else [generate(model, tokenizer, part, length, batch_size)])
        for answers, texts in zip(out, got):
            for i, text in zip(idx, texts):
                answers[i] = text
    return out


def task_scores(records: list[dict], per_item: list[float], metrics: list[str], lengths: list[int]) -> list[TaskScore]:
    """Each task's mean score, in the order the tasks first appear (multi-task rows; [] for one task)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if task := row_task(r):
            groups.setdefault(task, []).append(i)
    return [TaskScore(name=t, metric=metrics[idx[0]], n=len(idx), score=sum(per_item[i] for i in idx) / len(idx),
                      max_new_tokens=lengths[idx[0]]) for t, idx in groups.items()]


def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions for chat conversations that end with a user turn."""
    return generate_under(model, tokenizer, conversations, max_new_tokens, batch_size)[0]


def generate_under(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
                   adapters: list[str] | None = None) -> list[list[str]]:
    """Greedy completions of every conversation, one list per adapter of a PeftModel (`adapters`, in shared
    batches: PEFT routes each row through its own adapter) or one list for the model as it is (None).

    Prompts are sorted by length and left-padded in batches of `batch_size`; with adapters each batch is
    repeated once per adapter, so a row is padded exactly as it is when its candidate runs alone. No torch
    import here: `model.generate` runs without gradients itself, and this module's records load without torch."""
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    groups = adapters or [None]
    out: list[list[str]] = [[""] * len(prompts) for _ in groups]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models must be left-padded to generate in a batch
    was_training = model.training
    model.eval()  # PEFT refuses adapter_names in training mode
    what = f"generating {len(prompts)} answers" + (f" x {len(groups)} candidates" if adapters else "")
    try:
        with cached_casts(model):  # a PeftModel's frozen weights: cast to bf16 once, not every step
            for start in progress(range(0, len(order), batch_size), what, "batch"):
                idx = order[start : start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.repeat(len(groups), 1).to(model.device) for k, v in enc.items()}
                routing = {"adapter_names": [a for a in groups for _ in idx]} if adapters else {}
                gen = model.generate(
                    **enc, **routing, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
                texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for g in range(len(groups)):
                    for row, i in enumerate(idx):
                        out[g][i] = texts[g * len(idx) + row]
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
    check_metrics(records, metric)  # fail before generating, not after
    t0 = time.perf_counter()
    preds = generate_rows(model, tokenizer, records, max_new_tokens, batch_size)[0]
    return result_of(records, preds, metric, max_new_tokens, time.perf_counter() - t0)


def check_metrics(records: list[dict], metric: str) -> None:
    """Every metric these rows will be scored with is known (`metric`, or each multi-task row's own)."""
    for name in set(row_metrics(records, metric)) or {metric}:
        check_metric(name)


def result_of(records: list[dict], predictions: list[str], metric: str, max_new_tokens: int,
              seconds: float) -> TaskResult:
    """The TaskResult of these answers to these rows: each scored with its row's metric (`row_metrics`), with the
    per-task breakdown for multi-task rows. Any way of generating the answers (score_task, several candidates in
    one pass) ends here, so every caller scores alike."""
    metrics = row_metrics(records, metric)
    golds = [r["assistant"] for r in records]
    tagged = any(map(row_task, records))
    scores = score_items(predictions, golds, metrics if tagged else metric)
    tasks = task_scores(records, scores, metrics, row_lengths(records, max_new_tokens)) if tagged else []
    return TaskResult(
        score=sum(scores) / max(len(scores), 1), n=len(scores), per_item=scores,
        item_ids=[r["id"] for r in records], predictions=predictions, seconds=seconds,
        metric=metric_name(metrics) if tasks else metric, references=golds,
        prompts=[m[-1]["content"] if (m := messages(r, with_answer=False)) else "" for r in records],
        item_tasks=[row_task(r) or "" for r in records] if tasks else [], tasks=tasks,
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
