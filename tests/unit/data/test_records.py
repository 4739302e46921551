"""The task records validate writes, and the chat of one.

    .venv/bin/pytest -q tests/unit/data/test_records.py
"""

import json

from tuneline.data.records import messages, to_record


def test_messages_append_the_gold_answer():
    rec = {"prompt": json.dumps([{"role": "system", "content": ""}, {"role": "user", "content": "u"}]), "assistant": "a"}
    assert messages(rec)[-1] == {"role": "assistant", "content": "a"}
    assert messages(rec, with_answer=False) == [{"role": "system", "content": ""}, {"role": "user", "content": "u"}]


def test_to_record_ids_are_file_and_line_and_repeats_stay_unique():
    rec = {"source": "data/x/train.csv", "line": 7, "shape": "classification", "completion": "a", "label": "a",
           "prompt": [{"role": "user", "content": "u"}]}
    assert to_record(rec, "train")["id"] == "train.csv:7"
    assert to_record({**rec, "upsampled": 2}, "train")["id"] == "train.csv:7#2"
    assert json.loads(to_record(rec, "eval")["prompt"]) == rec["prompt"]
