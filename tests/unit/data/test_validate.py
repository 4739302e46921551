"""Data validation: every row accounted for, bad rows quarantined with file/line/reason, the gate, the policies."""

import json
import random

import pytest

from tuneline.config import DataConfig
from tuneline.data.readers import DataError
from tuneline.data.validate import validate


def _csv(path, rows, header="text,category"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TRAIN = [
    "where is my card,card_arrival",
    "my card has not arrived yet,card_arrival",
    "Where is my card,card_arrival",            # line 4: duplicate after normalization
    ",card_arrival",                             # line 5: empty text
    "I lost my card,lost_or_stolen_card",
    "someone stole my card,lost_or_stolen_card",
    "what is the weather,weather",               # line 8: label outside the set
    "card went missing today,lost_or_stolen_card",
    "the new card I ordered two weeks ago for my account still has not arrived in the post,card_arrival",
    "the new card I ordered two weeks ago for my account still has not arrived in the mail,card_arrival",  # near-dup
]


@pytest.fixture()
def small(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["card_arrival", "lost_or_stolen_card"]))
    train = _csv(tmp_path / "train.csv", TRAIN)
    test = _csv(tmp_path / "test.csv", ["card still not here,card_arrival", "my card was stolen,lost_or_stolen_card"])
    return DataConfig(train_file=str(train), test_file=str(test), labels_file=str(labels), rows_per_label=3,
                      eval_rows=2, mining_rows=1, checks={"contamination_benchmarks": ["eval"]})


WORDS = ("apple river stone cloud bread music paper green quick silver orange window garden yellow pencil "
         "market candle forest planet rocket violin turtle basket winter summer").split()


def _with(cfg, **changes):
    """A validated copy (model_copy would not turn nested dicts into config sections)."""
    return DataConfig(**(cfg.model_dump() | changes))


def _reasons(v):
    return sorted(v.rejected[v.rejected.action == "dropped"].reason)


def test_rows_are_accounted_for(small, tiny_tok):
    v = validate(small, tiny_tok)
    assert v.counts["input_rows"] == 12
    assert v.counts["accepted"] + v.counts["dropped"] + v.counts["unused"] == 12
    assert _reasons(v) == ["duplicate", "empty_field", "expectations", "near_duplicate"]
    assert not v.gate_failures


def test_rejected_rows_name_file_line_field(small, tiny_tok):
    rej = validate(small, tiny_tok).rejected
    label = rej[rej.detail.str.contains("label")].iloc[0]
    assert label.line == 8 and label.source.endswith("train.csv") and "weather" in label.row
    assert rej[rej.reason == "duplicate"].iloc[0].line == 4
    assert "train.csv:10" in rej[rej.reason == "near_duplicate"].iloc[0].detail


def test_report_policy_keeps_rows_and_lists_them(small, tiny_tok):
    v = validate(_with(small, checks=small.checks.model_dump() | {"near_duplicate": "report"}), tiny_tok)
    flagged = v.rejected[v.rejected.action == "flagged"]
    assert list(flagged.reason) == ["near_duplicate"] and v.counts["flagged"] == 1
    assert v.checks["near_duplicate"] == {"policy": "report", "flagged": 1}


def test_fail_policy_fails_the_gate_naming_the_key(small, tiny_tok):
    v = validate(_with(small, checks=small.checks.model_dump() | {"duplicate": "fail"}), tiny_tok)
    assert any("'duplicate' flagged 1 rows" in f and "data.checks.duplicate" in f for f in v.gate_failures)


def test_rejected_fraction_gate(small, tiny_tok):
    v = validate(_with(small, gate={"max_rejected_fraction": 0.1}), tiny_tok)
    assert any("data.gate.max_rejected_fraction=0.1" in f and "4 of 12" in f for f in v.gate_failures)


def test_splits_are_stratified_and_disjoint(small, tiny_tok):
    task = validate(small, tiny_tok).task
    train = task[task.split == "train"]
    assert set(train.label) == {"card_arrival", "lost_or_stolen_card"}
    assert not set(task[task.split == "eval"].prompt) & set(train.prompt)


def test_eval_leak_is_rejected(small, tiny_tok, tmp_path):
    _csv(tmp_path / "test.csv", ["where is my card,card_arrival", "my card was stolen,lost_or_stolen_card"])
    v = validate(small, tiny_tok)
    assert "eval_leak" in set(v.rejected.reason)


def test_benchmark_contamination_is_dropped(small, tiny_tok, tmp_path):
    gsm = json.loads(open("data/gsm8k/test.jsonl").readline())["question"].replace(",", " ").replace("\n", " ")
    _csv(tmp_path / "train.csv", TRAIN + [f"{gsm},card_arrival"])
    cfg = _with(small, checks=small.checks.model_dump() | {"contamination_benchmarks": ["gsm8k"]})
    v = validate(cfg, tiny_tok)
    hit = v.rejected[v.rejected.reason == "contamination"]
    assert len(hit) == 1 and hit.iloc[0].line == 12 and "GSM8K" in hit.iloc[0].detail
    strict = _with(cfg, gate={"fail_on_contamination": True})
    assert any("fail_on_contamination" in f for f in validate(strict, tiny_tok).gate_failures)


def test_too_long_rows_are_rejected_with_the_count(small, tiny_tok):
    v = validate(_with(small, max_tokens=30), tiny_tok)
    too_long = v.rejected[v.rejected.reason == "too_long"]
    assert len(too_long) and "data.max_tokens=30" in too_long.iloc[0].detail


def test_truncate_policy_cuts_answers_and_logs_them(tmp_path, tiny_tok):
    rows = [{"instruction": f"question number {i} about topic {i * 7}", "output": "word " * (40 if i == 3 else 3)}
            for i in range(8)]
    cfg = DataConfig(train_file=str(_jsonl(tmp_path / "a.jsonl", rows)), test_file=None, labels_file=None,
                     eval_rows=2, mining_rows=0, max_tokens=40, checks={"length": "truncate", "contamination_benchmarks": []})
    v = validate(cfg, tiny_tok)
    changed = v.rejected[v.rejected.action == "changed"]
    assert list(changed.reason) == ["truncated"] and v.counts["changed"] == 1
    assert v.counts["accepted"] + v.counts["dropped"] + v.counts["unused"] == 8


def test_balance_cap_and_upsample(small, tiny_tok):
    capped = validate(_with(small, rows_per_label=None, balance={"policy": "cap", "cap": 1}), tiny_tok)
    assert capped.balance["train"]["max"] == 1 and "balance_cap" in set(capped.rejected.reason)
    up = validate(_with(small, rows_per_label=None, balance={"policy": "upsample", "floor": 5}), tiny_tok)
    train = up.task[up.task.split == "train"]
    assert train.label.value_counts().min() == 5 and train.id.is_unique
    assert up.counts["upsampled"] > 0 and up.balance["train_before"]["min"] < 5


def test_min_rows_per_class_gate(small, tiny_tok):
    v = validate(_with(small, gate={"min_rows_per_class": 10}), tiny_tok)
    assert any("min_rows_per_class=10" in f for f in v.gate_failures)


def test_missing_file_names_path_and_fix(small, tmp_path):
    cfg = _with(small, train_file=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"nope.csv"):
        validate(cfg, None)


def test_no_rows_left_fails_the_gate(small, tmp_path, tiny_tok):
    _csv(tmp_path / "train.csv", ["x,weather"])
    v = validate(small, tiny_tok)
    assert any("no train or no eval rows" in f for f in v.gate_failures)


def test_alpaca_with_held_out_split_and_general_mix(tmp_path, tiny_tok):
    rows = [{"instruction": " ".join(random.Random(i).sample(WORDS, 8)), "input": "", "output": f"answer {i}"}
            for i in range(20)]
    general = [{"prompt": f"general question {i} about cooking pasta well", "completion": f"boil it {i}"} for i in range(20)]
    cfg = DataConfig(train_file=str(_jsonl(tmp_path / "a.jsonl", rows)), test_file=None, labels_file=None,
                     eval_rows=4, mining_rows=0, checks={"near_duplicate": "report", "contamination_benchmarks": ["eval"]},
                     general_mix={"file": str(_jsonl(tmp_path / "g.jsonl", general)), "fraction": 0.2})
    v = validate(cfg, tiny_tok)
    assert v.counts["shape"] == "alpaca" and v.counts["split_eval"] == 4
    assert v.counts["general_mix"] == 4 and v.counts["general_mix_file"].endswith("g.jsonl")
    assert v.counts["accepted"] + v.counts["dropped"] + v.counts["unused"] == 20


def test_preference_pairs_report_length_bias(small, tiny_tok):
    v = validate(_with(small, preference={"file": "data/hh_rlhf/helpful-base_test.prompt_chosen_rejected.jsonl",
                                          "rows": 4}), tiny_tok)
    assert v.counts["pairs_used"] == 4 and 0 <= v.counts["chosen_longer_share"] <= 1
    assert json.loads(v.preferences.iloc[0].prompt)[-1]["role"] == "user"


def test_default_data_validates(tiny_tok):
    v = validate(DataConfig(), tiny_tok, ["marketing"])
    assert v.counts["split_train"] >= 77 * 15 and v.counts["split_eval"] == 200
    assert v.task.groupby("split").label.nunique()["train"] == 77
    assert not v.gate_failures and v.gx and all(g["result"].success or g["result"].statistics for g in v.gx)


def test_hygiene_control_chars_and_answer_repeating_prompt(tmp_path, tiny_tok):
    rows = [{"prompt": f"tell me fact number {i} about the moon", "completion": f"fact {i} is that it orbits"} for i in range(8)]
    rows[2]["completion"] = "fact 2 \x07 with a bell"
    rows[5]["completion"] = rows[5]["prompt"].upper()
    cfg = DataConfig(train_file=str(_jsonl(tmp_path / "p.jsonl", rows)), test_file=None, labels_file=None,
                     eval_rows=1, mining_rows=0, checks={"contamination_benchmarks": []})
    rej = validate(cfg, tiny_tok).rejected.set_index("line")
    assert rej.loc[3, "reason"] == "control_chars" and rej.loc[6, "reason"] == "answer_is_prompt"


def _words(i, n=10):
    return " ".join(random.Random(1000 + i).sample(WORDS, n))


def test_row_level_corpus_each_row_ends_with_its_reason(tmp_path, tiny_tok):
    """The data-level bad rows: each is quarantined with the right reason, the good rows survive."""
    gsm = json.loads(open("data/gsm8k/test.jsonl").readline())["question"]
    eval_prompt = _words(0)
    good = [{"prompt": _words(i), "completion": f"answer {i}"} for i in range(1, 9)]
    bad = [
        ({"prompt": good[0]["prompt"].upper() + " ", "completion": "x"}, "duplicate"),
        ({"prompt": good[1]["prompt"].replace(" ", " ", 1) + " please", "completion": "y"}, "near_duplicate"),
        ({"prompt": eval_prompt, "completion": "z"}, "eval_leak"),
        ({"prompt": f"Solve this: {gsm}", "completion": "18"}, "contamination"),
        ({"prompt": "say something \x1b[31m red", "completion": "ok"}, "control_chars"),
        ({"prompt": "repeat after me", "completion": "Repeat after me."}, "answer_is_prompt"),
        ({"prompt": _words(50, 24) * 6, "completion": "long"}, "too_long"),
        ({"prompt": "   ", "completion": "blank prompt"}, "empty_field"),
        ({"prompt": "nan answer", "completion": float("nan")}, "nan"),
        ({"prompt": ["not", "messages"], "completion": "a"}, "bad_messages"),
    ]
    train = _jsonl(tmp_path / "train.jsonl", good + [row for row, _ in bad])
    test = _jsonl(tmp_path / "test.jsonl", [{"prompt": eval_prompt, "completion": "e"}])
    cfg = DataConfig(train_file=str(train), test_file=str(test), labels_file=None, eval_rows=1, mining_rows=0,
                     max_tokens=128, checks={"contamination_benchmarks": ["gsm8k", "eval"]})
    v = validate(cfg, tiny_tok)
    got = dict(zip(v.rejected.line, v.rejected.reason))
    assert got == {len(good) + 1 + i: reason for i, (_, reason) in enumerate(bad)}, v.rejected[["line", "reason", "detail"]]
    assert v.counts["split_train"] == len(good)


def test_classification_template_is_not_part_of_the_dedup_key(tmp_path, tiny_tok):
    """Every row shares the prompt template: with it in the key, short messages would all look alike."""
    texts = ["card not here", "lost my card", "stolen card now", "where is card", "card went missing", "card is late"]
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps(["a"]))
    cfg = DataConfig(train_file=str(_csv(tmp_path / "t.csv", [f"{t},a" for t in texts])), test_file=None,
                     labels_file=str(labels), eval_rows=1, mining_rows=0, rows_per_label=None,
                     prompt_template="Please classify the intent of this banking customer message: {text}",
                     checks={"contamination_benchmarks": []})
    v = validate(cfg, tiny_tok)
    assert v.counts["dropped"] == 0 and v.counts["split_train"] == 5
