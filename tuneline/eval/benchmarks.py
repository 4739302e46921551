"""Forgetting checks: MMLU and GSM8K as custom lm-eval tasks over the files shipped in data/, plus perplexity.

Run on the base model (or any local model dir) with the default evaluate config:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m tuneline.eval.benchmarks            # SmolLM2-135M-Instruct
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m tuneline.eval.benchmarks configs/default.yaml

In code, with a model already in memory (a plain transformers model or a PEFT `PeftModel`,
evaluated as is: no merged copy is written):

    results = run_benchmarks(model, tokenizer, cfg.evaluate)   # {"mmlu": BenchmarkResult, "gsm8k": ...}

Task YAMLs are written at run time into a temp dir with absolute `data_files` paths and loaded with
`TaskManager(include_path=..., include_defaults=False)`, so nothing is fetched from the hub. The
prompt, choice and scoring functions below are the ones lm-eval calls (YAML `!function` tags), so the
tests of these pure functions test what lm-eval actually runs.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tuneline.config import EvaluateConfig, GSM8KConfig, MMLUConfig
from tuneline.paths import DATA_DIR

MMLU_DIR = DATA_DIR / "mmlu" / "data"
GSM8K_FILE = DATA_DIR / "gsm8k" / "test.jsonl"
# The MMLU CSVs have no header row.
MMLU_COLUMNS = ["question", "A", "B", "C", "D", "answer"]
LETTERS = ["A", "B", "C", "D"]
# Greedy GSM8K generation stops at the next few-shot question or a blank line.
GSM8K_STOP = ["Question:", "\n\n", "</s>", "<|im_end|>", "<|endoftext|>"]
# Which lm-eval per-sample metric is the score: acc_norm (byte-length normalised log-likelihood)
# for cloze, since raw acc favours short answer texts.
MMLU_METRIC = {"letter": "acc", "cloze": "acc_norm"}


class BenchmarkResult(BaseModel):
    name: str
    metric: str
    score: float
    n: int
    # 0/1 per scored item, in item_ids order (sorted, so two models' lists pair up item by item).
    per_item: list[float]
    item_ids: list[str]
    per_subject: dict[str, float] = {}
    # Every aggregate lm-eval reported (e.g. both acc and acc_norm), averaged over subjects.
    metrics: dict[str, float] = {}
    seconds: float


class PerplexityResult(BaseModel):
    ppl: float
    # Mean next-token NLL (nats) per text, in input order.
    per_item: list[float]
    n_tokens: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------- MMLU (pure; lm-eval calls these)


def subject_title(subject: str) -> str:
    return subject.replace("_", " ")


def mmlu_description(subject: str, fmt: str) -> str:
    # The same headers as lm-eval's mmlu (letter) and mmlu_continuation (cloze) tasks.
    kind = "multiple choice questions" if fmt == "letter" else "questions"
    return f"The following are {kind} (with answers) about {subject_title(subject)}.\n\n"


def mmlu_letter_text(doc: dict) -> str:
    options = "".join(f"\n{letter}. {str(doc[letter]).strip()}" for letter in LETTERS)
    return f"{str(doc['question']).strip()}{options}\nAnswer:"


def mmlu_cloze_text(doc: dict) -> str:
    return f"Question: {str(doc['question']).strip()}\nAnswer:"


def mmlu_cloze_choices(doc: dict) -> list[str]:
    return [str(doc[letter]).strip() for letter in LETTERS]


def mmlu_target(doc: dict) -> int:
    return LETTERS.index(str(doc["answer"]).strip().upper())


def mmlu_choices(doc: dict, fmt: str) -> list[str]:
    return LETTERS if fmt == "letter" else mmlu_cloze_choices(doc)


def mmlu_prompt(subject: str, doc: dict, fmt: str, shots: tuple[dict, ...] = ()) -> str:
    """The context lm-eval builds (header, shots, question); each choice is scored after a space."""
    text = mmlu_letter_text if fmt == "letter" else mmlu_cloze_text
    parts = [f"{text(s)} {mmlu_choices(s, fmt)[mmlu_target(s)]}" for s in shots] + [text(doc)]
    return mmlu_description(subject, fmt) + "\n\n".join(parts)


def mmlu_task_name(subject: str, fmt: str) -> str:
    return f"tuneline_mmlu_{fmt}_{subject}"


def mmlu_task_config(subject: str, fmt: str, num_fewshot: int, data_dir: Path = MMLU_DIR) -> dict[str, Any]:
    test, dev = data_dir / "test" / f"{subject}_test.csv", data_dir / "dev" / f"{subject}_dev.csv"
    for path in (test, dev):
        if not path.exists():
            raise FileNotFoundError(f"no MMLU file {path}: check mmlu.subjects (names as in {data_dir / 'test'})")
    fn = "!function tuneline.eval.benchmarks."
    return {
        "task": mmlu_task_name(subject, fmt),
        "dataset_path": "csv",
        "dataset_kwargs": {
            "data_files": {"test": str(test.resolve()), "dev": str(dev.resolve())},
            "column_names": MMLU_COLUMNS,
            # Without these pandas turns answers like "4" into ints and "None"/"NA" into NaN.
            "converters": {c: fn + "_as_str" for c in MMLU_COLUMNS},
            "keep_default_na": False,
        },
        "test_split": "test",
        "fewshot_split": "dev",
        # MMLU's canonical shots: the first n dev rows, in order.
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": num_fewshot,
        "output_type": "multiple_choice",
        "description": mmlu_description(subject, fmt),
        "doc_to_text": fn + ("mmlu_letter_text" if fmt == "letter" else "mmlu_cloze_text"),
        "doc_to_choice": LETTERS if fmt == "letter" else fn + "mmlu_cloze_choices",
        "doc_to_target": fn + "mmlu_target",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }


def _as_str(value: str) -> str:
    return value


# ---------------------------------------------------------------- GSM8K (pure; lm-eval calls these)

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


GSM8K_TASK = "tuneline_gsm8k"


def gsm8k_task_config(cfg: GSM8KConfig, max_new_tokens: int | None = None, path: Path = GSM8K_FILE) -> dict[str, Any]:
    if cfg.num_fewshot > cfg.fewshot_pool:
        raise ValueError(f"gsm8k.num_fewshot={cfg.num_fewshot} needs gsm8k.fewshot_pool >= {cfg.num_fewshot}")
    fn = "!function tuneline.eval.benchmarks."
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
        "doc_to_text": fn + "gsm8k_text",
        "doc_to_target": fn + "gsm8k_target",
        "process_results": fn + "gsm8k_process_results",
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
    total = sum(1 for line in open(path) if line.strip())
    end = total if cfg.limit is None else min(total, cfg.fewshot_pool + cfg.limit)
    if end <= cfg.fewshot_pool:
        raise ValueError(f"gsm8k.fewshot_pool={cfg.fewshot_pool} leaves no items to score in {path} ({total} lines)")
    return list(range(cfg.fewshot_pool, end))


# ---------------------------------------------------------------- running lm-eval


def write_task_yaml(config: dict[str, Any], directory: Path) -> Path:
    """Write one task config; strings starting with '!function ' become YAML function tags."""
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)
    # safe_dump quotes the tag as a plain string; unquote it so lm-eval's loader resolves it.
    text = re.sub(r"'!function ([\w.]+)'", r"!function \1", text)
    path = directory / f"{config['task']}.yaml"
    path.write_text(text)
    return path


def _place(model) -> str:
    """Move the model to the GPU when there is one; returns the device it ends up on."""
    import torch

    # 4-bit (QLoRA) models are placed at load time and refuse .to().
    if torch.cuda.is_available() and not getattr(model, "is_quantized", False):
        model.to("cuda")
    return str(next(model.parameters()).device)


def _lm(model, tokenizer, batch_size: int):
    """Wrap an in-memory model for lm-eval: HFLM takes any object with .config, .device, __call__
    and .generate, so a PeftModel runs with its adapter active and nothing is merged or written."""
    from lm_eval.models.huggingface import HFLM

    device = _place(model)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)


def _evaluate(lm, configs: list[dict], seed: int, **selection) -> dict:
    """Run lm-eval on task configs written to a temp dir; returns its results dict (with samples)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="tuneline-tasks-") as tmp:
        for config in configs:
            write_task_yaml(config, Path(tmp))
        # include_defaults=False: indexing lm-eval's thousands of built-in YAMLs costs seconds.
        manager = TaskManager(include_path=tmp, include_defaults=False)
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=[c["task"] for c in configs],
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,  # our own paired bootstrap (tuneline.eval.stats) replaces lm-eval's stderr
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **selection,
        )


def _per_item(samples: list[dict], metric: str) -> dict[int, float]:
    # lm-eval logs one sample per (doc, filter); these tasks have a single filter.
    return {s["doc_id"]: float(s[metric]) for s in samples}


def run_mmlu(lm, cfg: MMLUConfig, seed: int = 0) -> BenchmarkResult:
    start = time.perf_counter()
    configs = [mmlu_task_config(s, cfg.format, cfg.num_fewshot) for s in cfg.subjects]
    out = _evaluate(lm, configs, seed, limit=cfg.limit_per_subject)
    metric = MMLU_METRIC[cfg.format]
    scored, per_subject = {}, {}
    aggregates: dict[str, list[float]] = defaultdict(list)
    for subject in cfg.subjects:
        task = mmlu_task_name(subject, cfg.format)
        items = _per_item(out["samples"][task], metric)
        # Zero-padded row numbers: sorting the ids sorts the items, whatever the subject order.
        scored.update({f"{subject}:{doc_id:04d}": v for doc_id, v in items.items()})
        per_subject[subject] = sum(items.values()) / len(items)
        for m in ("acc", "acc_norm"):
            aggregates[m].append(out["results"][task][f"{m},none"])
    ids = sorted(scored)
    per_item = [scored[i] for i in ids]
    return BenchmarkResult(
        name=f"mmlu_{cfg.format}",
        metric=metric,
        # Macro average: each subject counts the same, whatever its item count.
        score=sum(per_subject.values()) / len(per_subject),
        n=len(per_item),
        per_item=per_item,
        item_ids=ids,
        per_subject=per_subject,
        metrics={m: sum(v) / len(v) for m, v in aggregates.items()},
        seconds=time.perf_counter() - start,
    )


def run_gsm8k(lm, cfg: GSM8KConfig, seed: int = 0) -> BenchmarkResult:
    start = time.perf_counter()
    out = _evaluate(lm, [gsm8k_task_config(cfg)], seed, samples={GSM8K_TASK: gsm8k_items(cfg)})
    items = _per_item(out["samples"][GSM8K_TASK], "exact_match")
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


def run_benchmarks(model, tokenizer, cfg: EvaluateConfig) -> dict[str, BenchmarkResult]:
    """Every configured benchmark (a None section is skipped) on the model as it is in memory."""
    results: dict[str, BenchmarkResult] = {}
    if cfg.mmlu is None and cfg.gsm8k is None:
        return results
    was_training = model.training
    model.eval()
    try:
        lm = _lm(model, tokenizer, cfg.benchmark_batch_size)
        if cfg.mmlu is not None:
            results["mmlu"] = run_mmlu(lm, cfg.mmlu, cfg.seed)
        if cfg.gsm8k is not None:
            results["gsm8k"] = run_gsm8k(lm, cfg.gsm8k, cfg.seed)
    finally:
        model.train(was_training)
    return results


# ---------------------------------------------------------------- perplexity (plain torch)


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 1024) -> PerplexityResult:
    """Token-weighted perplexity over texts, and each text's mean next-token NLL.

    Moves even when accuracy on a benchmark sits at chance (tiny models), so it is the forgetting
    signal of last resort. The first token of each text has no prediction and is not scored.
    """
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    encoded = encode_texts(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    # Longest first, so each batch pads little; results go back to input order.
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    nll_sum, n_tok = [0.0] * len(texts), [0] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.zeros(len(idx), width, dtype=torch.long)
                mask = torch.zeros(len(idx), width, dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, : len(encoded[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
                for row, i in enumerate(idx):
                    nll_sum[i] = nll[row].sum().item()
                    n_tok[i] = int(mask[row, 1:].sum().item())
    finally:
        model.train(was_training)
    return perplexity_result(nll_sum, n_tok, start)


def encode_texts(tokenizer, texts: list[str], max_length: int = 1024) -> list[list[int]]:
    """Token ids of each text as perplexity scores them (no special tokens), so a GGUF export is
    scored on exactly the tokens the HF model was."""
    encoded = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    if short := [i for i, ids in enumerate(encoded) if len(ids) < 2]:
        raise ValueError(f"texts {short[:5]} have fewer than 2 tokens: nothing to score")
    return encoded


def perplexity_result(nll_sum: list[float], n_tok: list[int], start: float) -> PerplexityResult:
    """Token-weighted perplexity from each text's summed NLL and scored-token count."""
    total = sum(n_tok)
    return PerplexityResult(
        ppl=math.exp(sum(nll_sum) / total),
        per_item=[s / n for s, n in zip(nll_sum, n_tok)],
        n_tokens=total,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------- CLI


def main(argv: list[str]) -> None:
    from tuneline.model.base import load_model, load_tokenizer, prepare
    from tuneline.config import BaseModelConfig, load

    cfg = load(argv[0]) if argv else None
    ref = prepare(cfg.base_model if cfg else BaseModelConfig())
    evaluate = cfg.evaluate if cfg else EvaluateConfig()
    results = run_benchmarks(load_model(ref), load_tokenizer(ref), evaluate)
    for r in results.values():
        print(f"{r.name}: {r.metric}={r.score:.3f} n={r.n} ({r.seconds:.0f} s) {r.per_subject or ''}")


if __name__ == "__main__":
    main(sys.argv[1:])
