"""The rows `validate` hands to training and evaluation (task_data, preference_data) and the chat of one.

    tuneline validate configs/default.yaml          # writes these tables; the steps read them
    messages(task.iloc[0])                          # [system?, user, ..., assistant (the gold answer)]

Records are flat tables (pandas DataFrames) so ZenML stores them as Parquet:
- task rows: id, split, source, line, shape, prompt (JSON list of messages), assistant, label; a multi-task run
  (data.tasks) adds task, metric and max_new_tokens (TASK_MIX_COLUMNS: each row is scored with its task's metric
  and length, tuneline.eval.task) and prefixes each id with '<task>:'
- preference rows: id, source, line, prompt (JSON list of messages), chosen, rejected
- rejected rows: source, line, reason, field, detail, row, action (dropped / changed / flagged)
"""

from __future__ import annotations

import json
from pathlib import Path

TASK_COLUMNS = ["id", "split", "source", "line", "shape", "prompt", "assistant", "label"]
TASK_MIX_COLUMNS = ["task", "metric", "max_new_tokens"]  # data.tasks only (tuneline/data/tasks.py)
PREF_COLUMNS = ["id", "source", "line", "prompt", "chosen", "rejected"]
REJECT_COLUMNS = ["source", "line", "reason", "field", "detail", "row", "action"]


def messages(record: dict, with_answer: bool = True) -> list[dict]:
    """The chat for one task record: its prompt turns, then the gold answer as the assistant turn."""
    msgs = json.loads(record["prompt"]) if isinstance(record["prompt"], str) else list(record["prompt"])
    if with_answer:
        msgs.append({"role": "assistant", "content": record["assistant"]})
    return msgs


def row_id(r: dict) -> str:
    """'<file name>:<line>': unique within a run, readable in reports."""
    return f"{Path(r['source']).name}:{r['line']}"


def to_record(r: dict, split: str) -> dict:
    """A canonical record (tuneline.data.shapes) as a task row of `split`."""
    copy = f"#{r['upsampled']}" if r.get("upsampled") else ""  # upsampled repeats keep unique ids
    return {"id": f"{row_id(r)}{copy}", "split": split, "source": str(r["source"]), "line": int(r["line"]),
            "shape": r["shape"], "prompt": json.dumps(r["prompt"], ensure_ascii=False), "assistant": r["completion"],
            "label": r.get("label")}


def to_preference(r: dict) -> dict:
    """A canonical preference record as a preference row."""
    return {"id": row_id(r), "source": str(r["source"]), "line": int(r["line"]),
            "prompt": json.dumps(r["prompt"], ensure_ascii=False), "chosen": r["chosen"].strip(),
            "rejected": r["rejected"].strip()}
