"""Load the task and preference data, check it, and split it into normalized records.

    python -m tuneline.data configs/default.yaml   # prints the validation counts

Every input row ends up in exactly one place: a split (train / mining / eval) or `rejected`
with a reason code, and `accepted + rejected == input` is asserted. Bad files fail with the
path and what to do; bad rows are quarantined with file, line, field and reason.

Records are one flat table (a pandas DataFrame) so ZenML stores them as Parquet:
- task rows: id, split, source, line, system, user, assistant, label
- preference rows: id, source, line, prompt (JSON list of messages), chosen, rejected
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tuneline.config import DataConfig, resolve

TASK_COLUMNS = ["id", "split", "source", "line", "system", "user", "assistant", "label"]
REJECT_COLUMNS = ["source", "line", "reason", "field", "detail", "row"]


class DataError(ValueError):
    """Input that cannot be used at all (as opposed to a bad row, which is quarantined)."""


@dataclass
class Validated:
    task: pd.DataFrame
    preferences: pd.DataFrame
    rejected: pd.DataFrame
    counts: dict = field(default_factory=dict)


def _open_text(path: Path):
    if not path.exists():
        raise DataError(f"{path}: file not found. Check data.* paths in the config (relative paths start at the project root).")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_labels(path: Path) -> list[str]:
    try:
        with _open_text(path) as f:
            labels = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected a JSON list of label strings") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


def read_task_csv(path: Path, text_col: str, label_col: str) -> list[dict]:
    """Rows as dicts with their 1-based file line (header = line 1)."""
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in (text_col, label_col) if c not in header]
            if missing:
                raise DataError(
                    f"{path}: column(s) {missing} not in the header {header}; set data.text_column / data.label_column"
                )
            rows = [{"line": reader.line_num, **r} for r in reader]
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as UTF-8 CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _reject(rejected: list, source: Path, row: dict, reason: str, fld: str, detail: str) -> None:
    rejected.append(
        {"source": str(source), "line": int(row.get("line", 0)), "reason": reason, "field": fld,
         "detail": detail, "row": json.dumps({k: v for k, v in row.items() if k != "line"}, ensure_ascii=False)}
    )


def check_task_rows(rows: list[dict], source: Path, cfg: DataConfig, labels: set[str], rejected: list) -> list[dict]:
    """Schema, hygiene and exact-duplicate checks; returns the rows that pass."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        text, label = (row.get(cfg.text_column) or "").strip(), (row.get(cfg.label_column) or "").strip()
        if not text:
            _reject(rejected, source, row, "empty_text", cfg.text_column, "empty or whitespace-only text")
        elif label not in labels:
            _reject(rejected, source, row, "unknown_label", cfg.label_column, f"label {label!r} is not in data.labels_file")
        elif _norm(text) in seen:
            _reject(rejected, source, row, "duplicate", cfg.text_column, "exact duplicate (normalized text) of an earlier row")
        else:
            seen.add(_norm(text))
            kept.append({**row, "text": text, "label": label})
    return kept


def to_record(row: dict, cfg: DataConfig, split: str) -> dict:
    return {
        "id": f"{Path(row['source']).name}:{row['line']}",
        "split": split,
        "source": row["source"],
        "line": int(row["line"]),
        "system": cfg.system_prompt,
        "user": cfg.prompt_template.format(text=row["text"]),
        "assistant": row["label"],
        "label": row["label"],
    }


def messages(record: dict, with_answer: bool = True) -> list[dict]:
    """The chat for one task record; system=None leaves the model's default system turn."""
    msgs = [] if record.get("system") is None else [{"role": "system", "content": record["system"]}]
    msgs.append({"role": "user", "content": record["user"]})
    if with_answer:
        msgs.append({"role": "assistant", "content": record["assistant"]})
    return msgs


def stratified(rows: list[dict], per_label: int | None, total: int | None, rng: random.Random) -> tuple[list, list]:
    """Take `per_label` rows of each label (or `total` rows round-robin over labels); return (taken, rest)."""
    by_label: dict[str, list] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    for group in by_label.values():
        rng.shuffle(group)
    taken: list = []
    if per_label is not None:
        for label in sorted(by_label):
            taken += by_label[label][:per_label]
    else:
        depth = 0
        while len(taken) < (total or 0) and any(len(g) > depth for g in by_label.values()):
            for label in sorted(by_label):
                if depth < len(by_label[label]) and len(taken) < total:
                    taken.append(by_label[label][depth])
            depth += 1
    ids = {id(r) for r in taken}
    return taken, [r for r in rows if id(r) not in ids]


def token_lengths(texts: list[list[dict]], tokenizer) -> list[int]:
    """Token counts after the chat template, tokenized in one batch (fast tokenizer)."""
    rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in texts]
    return [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def drop_long(records: list[dict], cfg: DataConfig, tokenizer, rejected: list) -> list[dict]:
    lengths = token_lengths([messages(r) for r in records], tokenizer)
    kept = []
    for rec, n in zip(records, lengths):
        if n > cfg.max_tokens:
            _reject(rejected, Path(rec["source"]), {"line": rec["line"], "text": rec["user"], "label": rec["label"]},
                    "too_long", "text", f"{n} tokens after the chat template > data.max_tokens={cfg.max_tokens}")
        else:
            kept.append(rec)
    return kept


def read_preferences(path: Path, limit: int, rejected: list) -> list[dict]:
    """HH-RLHF-style prompt/chosen/rejected JSONL; keeps the `limit` shortest valid pairs."""
    out = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _reject(rejected, path, {"line": line_no, "raw": line[:200]}, "bad_json", "-", str(e))
                continue
            row["line"] = line_no
            missing = [k for k in ("prompt", "chosen", "rejected") if not str(row.get(k) or "").strip()]
            if missing:
                _reject(rejected, path, row, "missing_field", missing[0], f"empty or missing {missing}")
            elif row["chosen"].strip() == row["rejected"].strip():
                _reject(rejected, path, row, "identical_pair", "chosen", "chosen == rejected")
            else:
                out.append(row)
    out.sort(key=lambda r: len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]))
    return [
        {"id": f"{path.name}:{r['line']}", "source": str(path), "line": r["line"],
         "prompt": json.dumps(hh_prompt_messages(r["prompt"])), "chosen": r["chosen"].strip(),
         "rejected": r["rejected"].strip()}
        for r in out[:limit]
    ]


def hh_prompt_messages(prompt: str) -> list[dict]:
    """'\\n\\nHuman: ..\\n\\nAssistant: ..' transcript -> chat messages (the trailing empty assistant cue dropped)."""
    msgs = []
    for chunk in prompt.split("\n\n"):
        for prefix, role in (("Human:", "user"), ("Assistant:", "assistant")):
            if chunk.startswith(prefix):
                msgs.append({"role": role, "content": chunk[len(prefix):].strip()})
                break
        else:
            if msgs and chunk.strip():
                msgs[-1]["content"] += "\n\n" + chunk.strip()
    return [m for m in msgs if m["content"]] if msgs and not msgs[-1]["content"] else msgs


def validate(cfg: DataConfig, tokenizer) -> Validated:
    """Load, check and split the configured data; every input row is accounted for."""
    labels = read_labels(resolve(cfg.labels_file))
    rejected: list[dict] = []
    rng = random.Random(cfg.seed)
    train_path, test_path = resolve(cfg.train_file), resolve(cfg.test_file)
    train_raw = read_task_csv(train_path, cfg.text_column, cfg.label_column)
    test_raw = read_task_csv(test_path, cfg.text_column, cfg.label_column)
    for r in train_raw:
        r["source"] = str(train_path)
    for r in test_raw:
        r["source"] = str(test_path)

    test_ok = check_task_rows(test_raw, test_path, cfg, set(labels), rejected)
    eval_rows, test_unused = stratified(test_ok, None, cfg.eval_rows, rng)
    train_ok = check_task_rows(train_raw, train_path, cfg, set(labels), rejected)
    # Leakage: a training row whose text is also an evaluation row would inflate the score.
    eval_texts = {_norm(r["text"]) for r in eval_rows}
    no_leak = []
    for r in train_ok:
        if _norm(r["text"]) in eval_texts:
            _reject(rejected, train_path, r, "eval_leak", cfg.text_column, "same text as a held-out evaluation row")
        else:
            no_leak.append(r)
    train_rows, rest = stratified(no_leak, cfg.rows_per_label, None, rng)
    mining_rows, unused = stratified(rest, None, cfg.mining_rows, rng)

    records = [to_record(r, cfg, "train") for r in train_rows]
    records += [to_record(r, cfg, "mining") for r in mining_rows]
    records += [to_record(r, cfg, "eval") for r in eval_rows]
    records = drop_long(records, cfg, tokenizer, rejected)
    task = pd.DataFrame(records, columns=TASK_COLUMNS)
    for split in ("train", "eval"):
        if not (task["split"] == split).any():
            raise DataError(f"no {split} rows left after validation; see the rejected_rows artifact for why")

    prefs = []
    if cfg.preference_rows:
        prefs = read_preferences(resolve(cfg.preference_file), cfg.preference_rows, rejected)
    counts = {
        "input_rows": len(train_raw) + len(test_raw),
        "rejected": len(rejected),
        "unused": len(unused) + len(test_unused),
        **{f"split_{k}": int(v) for k, v in task["split"].value_counts().items()},
        "preference_pairs": len(prefs),
        "labels": len(labels),
    }
    rej = pd.DataFrame(rejected, columns=REJECT_COLUMNS)
    task_rejected = int((rej["source"] != str(resolve(cfg.preference_file))).sum()) if len(rej) else 0
    accounted = len(task) + task_rejected + counts["unused"]
    assert accounted == counts["input_rows"], f"row accounting broke: {accounted} != {counts['input_rows']}"
    counts["reasons"] = rej["reason"].value_counts().to_dict() if len(rej) else {}
    return Validated(task=task, preferences=pd.DataFrame(prefs, columns=["id", "source", "line", "prompt", "chosen", "rejected"]),
                     rejected=rej, counts=counts)


if __name__ == "__main__":
    import sys

    from tuneline.base_model import load_tokenizer, prepare
    from tuneline.config import load

    cfg = load(sys.argv[1])
    v = validate(cfg.data, load_tokenizer(prepare(cfg.base_model)))
    print(json.dumps(v.counts, indent=2))


def read_general_texts(path: Path, field: str, rows: int, min_words: int) -> list[str]:
    """The last `rows` texts of a JSONL file with at least `min_words` words (held-out general text)."""
    texts = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            try:
                text = str(json.loads(line).get(field) or "").strip()
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e})") from None
            if len(text.split()) >= min_words:
                texts.append(text)
    if len(texts) < 2:
        raise DataError(f"{path}: fewer than 2 '{field}' texts with {min_words}+ words; set evaluate.perplexity.file/field")
    return texts[-rows:]
