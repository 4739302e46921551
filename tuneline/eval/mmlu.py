"""MMLU as custom lm-eval tasks (one per subject) over the CSVs shipped in data/mmlu, letter or cloze format.

    result = run_mmlu(lm, cfg.evaluate.mmlu, seed)   # lm: harness._lm(model, tok, 8) or gguf_lm.GGUFLM(path)

`tuneline evaluate configs/default.yaml` runs it on every candidate through `harness.run_benchmarks`.
The prompt, choice and target functions below are the ones lm-eval calls (YAML `!function` tags), so
the tests of these pure functions test what lm-eval actually runs. lm-eval builds the requests; the
model side scores each question once and its four answers on its KV cache (harness.SharedContextHFLM,
gguf_lm.GGUFLM), with lm-eval's HFLM as the reference (`mmlu.reuse_context: false`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneline.config import MMLUConfig
from tuneline.paths import DATA_DIR

if TYPE_CHECKING:
    from tuneline.eval.harness import BenchmarkResult

MMLU_DIR = DATA_DIR / "mmlu" / "data"
# The MMLU CSVs have no header row.
MMLU_COLUMNS = ["question", "A", "B", "C", "D", "answer"]
LETTERS = ["A", "B", "C", "D"]
# Which lm-eval per-sample metric is the score: acc_norm (byte-length normalised log-likelihood)
# for cloze, since raw acc favours short answer texts.
MMLU_METRIC = {"letter": "acc", "cloze": "acc_norm"}
_FUNCTION = "!function tuneline.eval.mmlu."


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
    return {
        "task": mmlu_task_name(subject, fmt),
        "dataset_path": "csv",
        "dataset_kwargs": {
            "data_files": {"test": str(test.resolve()), "dev": str(dev.resolve())},
            "column_names": MMLU_COLUMNS,
            # Without these pandas turns answers like "4" into ints and "None"/"NA" into NaN.
            "converters": {c: _FUNCTION + "_as_str" for c in MMLU_COLUMNS},
            "keep_default_na": False,
        },
        "test_split": "test",
        "fewshot_split": "dev",
        # MMLU's canonical shots: the first n dev rows, in order.
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": num_fewshot,
        "output_type": "multiple_choice",
        "description": mmlu_description(subject, fmt),
        "doc_to_text": _FUNCTION + ("mmlu_letter_text" if fmt == "letter" else "mmlu_cloze_text"),
        "doc_to_choice": LETTERS if fmt == "letter" else _FUNCTION + "mmlu_cloze_choices",
        "doc_to_target": _FUNCTION + "mmlu_target",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }


def _as_str(value: str) -> str:
    return value


def run_mmlu(lm, cfg: MMLUConfig, seed: int = 0) -> BenchmarkResult:
    """Every configured subject on `lm`, scored as the macro average over subjects."""
    # Imported here: the harness imports this module to run the configured benchmarks.
    from tuneline.eval.harness import BenchmarkResult, item_scores, run_tasks

    start = time.perf_counter()
    configs = [mmlu_task_config(s, cfg.format, cfg.num_fewshot) for s in cfg.subjects]
    out = run_tasks(lm, configs, seed, limit=cfg.limit_per_subject)
    metric = MMLU_METRIC[cfg.format]
    scored, per_subject = {}, {}
    aggregates: dict[str, list[float]] = defaultdict(list)
    for subject in cfg.subjects:
        task = mmlu_task_name(subject, cfg.format)
        items = item_scores(out["samples"][task], metric)
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
