"""data.train_rows (a seeded sample of any shape), the mining split of every shape, and DPO that can get no
pairs refused before any training: at config load, or by the data gate.

    .venv/bin/pytest -q tests/unit/data/test_train_rows.py
"""

import json
import random

import pytest
from pydantic import ValidationError

from tuneline.config import ConfigError, DataConfig, DPOData, TunelineConfig, load
from tuneline.data.validate import validate

WORDS = ("apple", "river", "stone", "cloud", "bread", "music", "paper", "green", "quick", "silver", "orange", "window",
         "garden", "yellow", "pencil", "market", "candle", "forest", "planet", "rocket", "violin", "turtle", "basket",
         "winter", "summer")
MINES = DPOData(enabled=True, mine_mistakes=True)


def _alpaca(tmp_path, n=30, **changes) -> DataConfig:
    rows = [{"instruction": " ".join(random.Random(i).sample(WORDS, 9)), "output": f"answer {i}"} for i in range(n)]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DataConfig(**({"train_file": str(path), "test_file": None, "labels_file": None, "eval_rows": 4,
                          "mining_rows": 0, "checks": {"contamination_benchmarks": [], "near_duplicate": "report"}}
                         | changes))


def _classification(tmp_path, **changes) -> DataConfig:
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b"]))
    rows = [f"{' '.join(random.Random(i).sample(WORDS, 7))},{'ab'[i % 2]}" for i in range(24)]
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "\n".join(rows) + "\n")
    return DataConfig(**({"train_file": str(train), "test_file": None, "labels_file": str(labels), "eval_rows": 4,
                          "rows_per_label": None, "mining_rows": 0,
                          "checks": {"contamination_benchmarks": [], "near_duplicate": "report"}} | changes))


def _split(v, name):
    return v.task[v.task.split == name]


def _accounted(v) -> bool:
    c = v.counts
    return c["accepted"] + c["dropped"] + c["unused"] == c["input_rows"]


def test_train_rows_samples_a_generation_file_seeded(tmp_path, tiny_tok):
    v = validate(_alpaca(tmp_path, train_rows=10), tiny_tok)
    assert v.counts["split_train"] == 10 and v.counts["split_eval"] == 4 and v.counts["unused"] == 16
    assert (v.counts["train_rows"], v.counts["train_rows_available"]) == (10, 26) and _accounted(v)
    again = validate(_alpaca(tmp_path, train_rows=10), tiny_tok)
    other = validate(_alpaca(tmp_path, train_rows=10, seed=1), tiny_tok)
    assert list(_split(again, "train").id) == list(_split(v, "train").id)
    assert set(_split(other, "train").id) != set(_split(v, "train").id)
    assert not set(_split(v, "train").id) & set(_split(v, "eval").id)


def test_train_rows_spreads_over_labels(tmp_path, tiny_tok):
    v = validate(_classification(tmp_path, train_rows=6), tiny_tok)
    assert _split(v, "train").label.value_counts().to_dict() == {"a": 3, "b": 3} and _accounted(v)


def test_train_rows_with_rows_per_label_is_refused():
    with pytest.raises(ValidationError, match=r"data.train_rows=5 and data.rows_per_label=3 are both set.*Set one"):
        DataConfig(train_rows=5, rows_per_label=3)
    assert DataConfig(train_rows=5).rows_per_label is None  # train_rows alone turns the default per-label sample off
    with pytest.raises(ConfigError, match=r"data.train_rows=100: .*rows_per_label=16 are both set"):
        load("configs/default.yaml", ["data.train_rows=100"])
    assert load("configs/default.yaml", ["data.train_rows=100", "data.rows_per_label=null"]).data.train_rows == 100


def test_train_rows_beyond_the_data_fails_the_gate(tmp_path, tiny_tok):
    v = validate(_alpaca(tmp_path, train_rows=500), tiny_tok)
    assert any("data.train_rows=500 but only 26 training rows" in f and "at most 26" in f for f in v.gate_failures)


def test_generation_data_gets_a_seeded_mining_split_when_dpo_mines(tmp_path, tiny_tok):
    """Before: the mining split of a non-classification shape was always empty, so DPO had nothing to mine."""
    v = validate(_alpaca(tmp_path, mining_rows=6), tiny_tok, dpo=MINES)
    mining, train = _split(v, "mining"), _split(v, "train")
    assert len(mining) == 6 == v.counts["mining_held_out"] and len(train) == 20 and _accounted(v)
    assert not set(mining.id) & set(train.id) and not set(mining.id) & set(_split(v, "eval").id)
    assert list(validate(_alpaca(tmp_path, mining_rows=6), tiny_tok, dpo=MINES).task.id) == list(v.task.id)
    assert not v.gate_failures
    greedy = validate(_alpaca(tmp_path, mining_rows=300), tiny_tok, dpo=MINES)  # 300: the default
    assert greedy.counts["split_mining"] == 26 and "split_train" not in greedy.counts
    assert any("data.mining_rows=300 holds out 26 rows for DPO to mine and leaves 0 to train" in f
               and "lower data.mining_rows (e.g. to 5)" in f for f in greedy.gate_failures)
    # DPO off, or not mining: no training row is held back
    for dpo in (None, DPOData(enabled=False), DPOData(enabled=True, mine_mistakes=False)):
        kept = validate(_alpaca(tmp_path, mining_rows=6), tiny_tok, dpo=dpo)
        assert kept.counts["split_train"] == 26 and "split_mining" not in kept.counts


def test_train_rows_leaves_the_rest_for_mining(tmp_path, tiny_tok):
    v = validate(_alpaca(tmp_path, train_rows=10, mining_rows=5), tiny_tok, dpo=MINES)
    assert (v.counts["split_train"], v.counts["split_mining"], v.counts["unused"]) == (10, 5, 11)
    assert "mining_held_out" not in v.counts and _accounted(v)
    # DPO from user pairs alone (or no DPO): nothing mines, so the rows the sample left over are unused
    for dpo in (DPOData(enabled=True, mine_mistakes=False), DPOData(enabled=False)):
        v = validate(_alpaca(tmp_path, train_rows=10, mining_rows=5), tiny_tok, dpo=dpo)
        assert (v.counts["split_train"], v.counts.get("split_mining", 0), v.counts["unused"]) == (10, 0, 16) and _accounted(v)


def test_the_gate_stops_dpo_that_can_get_no_pairs(tmp_path, tiny_tok):
    # the per-label sample takes every row: nothing left to mine, and raising mining_rows would not help
    cfg = _classification(tmp_path, rows_per_label=20, mining_rows=40)
    failures = validate(cfg, tiny_tok, dpo=MINES).gate_failures
    assert any("at most 0 preference pairs" in f and "lower data.rows_per_label or data.train_rows" in f
               and "data.preference is not set" in f and "raise data.mining_rows" not in f for f in failures)
    assert not validate(cfg, tiny_tok, dpo=DPOData(enabled=False)).gate_failures
    # user pairs only, and all of them are unusable
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi there", "chosen": "Same.", "rejected": "same"}) + "\n")
    users = _alpaca(tmp_path, preference={"file": str(pairs)})
    failures = validate(users, tiny_tok, dpo=DPOData(enabled=True, mine_mistakes=False)).gate_failures
    assert any("dpo.mine_mistakes is false; data.preference gave 0 usable pairs (1 rejected)" in f for f in failures)


def test_config_load_refuses_dpo_with_no_source_of_pairs():
    with pytest.raises(ValidationError, match=r"dpo.mine_mistakes: false .* data.preference is not set: set "
                                              r"data.preference.file"):
        TunelineConfig(dpo={"mine_mistakes": False})
    with pytest.raises(ValidationError, match=r"data.mining_rows=0 gives fewer than the 2 pairs"):
        TunelineConfig(data={"mining_rows": 0})
    with pytest.raises(ConfigError, match=r"^configs/default.yaml: the config is not valid:\n  - parameters.config: "
                                          r"dpo.enabled mines"):
        load("configs/default.yaml", ["data.mining_rows=0"])
    assert not TunelineConfig(data={"mining_rows": 0}, dpo={"enabled": False}).dpo.enabled
    user = TunelineConfig(data={"mining_rows": 0, "preference": {"file": "pairs.jsonl"}}, dpo={"mine_mistakes": False})
    assert user.dpo.data_use() == DPOData(enabled=True, mine_mistakes=False)
