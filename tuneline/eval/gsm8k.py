"""GSM8K as a custom lm-eval task over data/gsm8k/test.jsonl: few-shot, greedy, exact match on the final number.

    result = run_gsm8k(lm, cfg.evaluate.gsm8k, seed)   # lm: harness._lm(model, tok, 8) or gguf_lm.GGUFLM(path)

`tuneline evaluate configs/default.yaml` runs it on every candidate through `harness.run_benchmarks`.
The first `fewshot_pool` lines are the shots, the `limit` lines after them are scored. The text,
target and scoring functions below are the ones lm-eval calls (YAML `!function` tags).
No shared-prefix KV cache here (unlike MMLU): the default sampler draws each item's shots at random from
the pool (seeded), so two prompts share no prefix beyond "Question:". Sharing one would need the same
shots for every item (`sampler: first_n`), which changes the prompts and so the benchmark's numbers.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneline.config import GSM8KConfig
from tuneline.paths import DATA_DIR

if TYPE_CHECKING:
    from tuneline.eval.harness import BenchmarkResult

GSM8K_FILE = DATA_DIR / "gsm8k" / "test.jsonl"
GSM8K_TASK = "tuneline_gsm8k"
# Greedy GSM8K generation stops at the next few-shot question or a blank line.
GSM8K_STOP = ["Question:", "\n\n", "</s>", "<|im_end|>", "<|endoftext|>"]
_FUNCTION = "!function tuneline.eval.gsm8k."
_HASH_ANSWER = re.compile(r"####\s*(-?[$0-9.,]*[0-9])")
_NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def normalize_number(text: str) -> str:
    """'$1,234.' -> '1234': commas, dollar signs and a trailing full stop carry no value."""
    return text.replace(",", "").replace("$", "").strip().rstrip(".")


def extract_answer(output: str) -> str | None:
    """The number after '#### ' if the model wrote one, else the last number in the output."""
    match = _HASH_ANSWER.search(output)
    if match:
        return normalize_number(match.group(1))
    numbers = _NUMBER.findall(output)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_reference(doc: dict) -> str:
    return normalize_number(doc["answer"].split("####")[-1])


def gsm8k_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def gsm8k_target(doc: dict) -> str:
    # The full worked answer: few-shot examples show the reasoning and the '#### N' line.
    return doc["answer"]


def gsm8k_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(extract_answer(results[0]) == gsm8k_reference(doc))}


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k_task_config(cfg: GSM8KConfig, max_new_tokens: int | None = None, path: Path = GSM8K_FILE) -> dict[str, Any]:
    if cfg.num_fewshot > cfg.fewshot_pool:
        raise ValueError(f"gsm8k.num_fewshot={cfg.num_fewshot} needs gsm8k.fewshot_pool >= {cfg.num_fewshot}")
    # The pool goes inline: lm-eval 0.4.13 ignores fewshot_config.fewshot_indices, and a split of
    # the same file would expose scored items as shots.
    pool = [{"question": d["question"], "answer": d["answer"]} for d in read_jsonl(path)[: cfg.fewshot_pool]]
    return {
        "task": GSM8K_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path.resolve())}},
        "test_split": "test",
        "fewshot_config": {"sampler": "default", "samples": pool},
        "num_fewshot": cfg.num_fewshot,
        "output_type": "generate_until",
        "doc_to_text": _FUNCTION + "gsm8k_text",
        "doc_to_target": _FUNCTION + "gsm8k_target",
        "process_results": _FUNCTION + "gsm8k_process_results",
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {
            "until": GSM8K_STOP,
            "do_sample": False,
            "max_gen_toks": max_new_tokens or cfg.max_new_tokens,
        },
        "metadata": {"version": 1.0},
    }


def gsm8k_items(cfg: GSM8KConfig, path: Path = GSM8K_FILE) -> list[int]:
    """Scored line indices: the `limit` items right after the few-shot pool."""
    with open(path) as f:
        total = sum(1 for line in f if line.strip())
    end = total if cfg.limit is None else min(total, cfg.fewshot_pool + cfg.limit)
    if end <= cfg.fewshot_pool:
        raise ValueError(f"gsm8k.fewshot_pool={cfg.fewshot_pool} leaves no items to score in {path} ({total} lines)")
    return list(range(cfg.fewshot_pool, end))


def run_gsm8k(lm, cfg: GSM8KConfig, seed: int = 0) -> BenchmarkResult:
    """The scored items on `lm`: exact match of the final number, per item in line order."""
    # Imported here: the harness imports this module to run the configured benchmarks.
    from tuneline.eval.harness import BenchmarkResult, item_scores, run_tasks

    start = time.perf_counter()
    batch = getattr(lm, "batch_size_per_gpu", None)  # HFLM's; generate_until reads it
    if batch is not None:
        lm.batch_size_per_gpu = cfg.batch_size
    try:
        out = run_tasks(lm, [gsm8k_task_config(cfg)], seed, samples={GSM8K_TASK: gsm8k_items(cfg)})
    finally:
        if batch is not None:
            lm.batch_size_per_gpu = batch
    items = item_scores(out["samples"][GSM8K_TASK], "exact_match")
    order = sorted(items)
    return BenchmarkResult(
        name="gsm8k",
        metric="exact_match",
        score=sum(items.values()) / len(items),
        n=len(items),
        per_item=[items[i] for i in order],
        item_ids=[f"gsm8k:{i:04d}" for i in order],
        metrics={"exact_match": out["results"][GSM8K_TASK]["exact_match,none"]},
        seconds=time.perf_counter() - start,
    )
