"""data.test_file: a file of another shape than the training file is refused, the training file itself is
flagged by the gate and its rows are counted once.

    .venv/bin/pytest -q tests/unit/data/test_test_file.py
"""

import json

import pytest

from tuneline.config import DataConfig
from tuneline.data.readers import DataError
from tuneline.data.validate import validate

TEXTS = ["where is my card", "my card has not arrived", "I lost my card", "someone stole my card",
         "card went missing", "the card is late again", "card never came", "thief took my wallet"]


def _classification(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["card_arrival", "lost_or_stolen_card"]))
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},{['card_arrival', 'lost_or_stolen_card'][i % 2]}\n"
                                              for i, t in enumerate(TEXTS)))
    return {"train_file": str(train), "labels_file": str(labels), "rows_per_label": None, "eval_rows": 2,
            "mining_rows": 0, "checks": {"contamination_benchmarks": [], "near_duplicate": "report"}}


def test_a_test_file_of_another_shape_is_refused(tmp_path, tiny_tok):
    """Before: train classification + test alpaca gave an alpaca eval split and a passing gate."""
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n"
                            for i in range(4)))
    cfg = DataConfig(**_classification(tmp_path), test_file=str(test))
    with pytest.raises(DataError) as err:
        validate(cfg, tiny_tok)
    msg = str(err.value)
    assert msg.startswith(f"{test}: its rows are alpaca, but data.train_file {cfg.train_file} is classification")
    assert "Point data.test_file at a classification file, or set data.test_file: null" in msg


def test_the_training_file_as_test_file_is_flagged_and_counted_once(tmp_path, tiny_tok):
    base = _classification(tmp_path)
    alone = validate(DataConfig(**base, test_file=None), tiny_tok)
    same_path = str(tmp_path / "." / "train.csv")  # the same file, spelled differently
    v = validate(DataConfig(**base, test_file=same_path), tiny_tok)
    assert v.counts["input_rows"] == len(TEXTS) == alone.counts["input_rows"]  # before: 16, counted twice
    assert v.counts["accepted"] + v.counts["dropped"] + v.counts["unused"] == len(TEXTS)
    assert v.task.equals(alone.task)  # read once, eval rows held out of it
    assert any("data.train_file and data.test_file are the same file" in f and "data.test_file: null" in f
               for f in v.gate_failures)
    assert not alone.gate_failures
