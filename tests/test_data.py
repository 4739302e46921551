"""Data validation: every row accounted for, bad rows quarantined with file/line/reason, bad files named."""

import json

import pytest

from tuneline.config import DataConfig
from tuneline.data import DataError, hh_prompt_messages, messages, validate


def _csv(path, rows, header="text,category"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture()
def small(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["card_arrival", "lost_or_stolen_card"]))
    train = _csv(tmp_path / "train.csv", [
        "where is my card,card_arrival",
        "my card has not arrived yet,card_arrival",
        "Where is my card,card_arrival",            # duplicate after normalization
        ",card_arrival",                             # empty text
        "I lost my card,lost_or_stolen_card",
        "someone stole my card,lost_or_stolen_card",
        "what is the weather,weather",               # label outside the set
        "card went missing today,lost_or_stolen_card",
    ])
    test = _csv(tmp_path / "test.csv", ["card still not here,card_arrival", "my card was stolen,lost_or_stolen_card"])
    return DataConfig(train_file=str(train), test_file=str(test), labels_file=str(labels), rows_per_label=2,
                      eval_rows=2, mining_rows=1, preference_rows=0)


def test_rows_are_accounted_for(small, tiny_tok):
    v = validate(small, tiny_tok)
    assert v.counts["input_rows"] == 10
    assert len(v.task) + v.counts["rejected"] + v.counts["unused"] == 10
    assert sorted(v.rejected["reason"]) == ["duplicate", "empty_text", "unknown_label"]


def test_rejected_rows_name_file_line_field(small, tiny_tok):
    rej = validate(small, tiny_tok).rejected.set_index("reason")
    assert rej.loc["unknown_label", "line"] == 8 and rej.loc["unknown_label", "field"] == "category"
    assert rej.loc["unknown_label", "source"].endswith("train.csv")
    assert "weather" in rej.loc["unknown_label", "row"]
    assert rej.loc["duplicate", "line"] == 4


def test_splits_are_stratified_and_disjoint(small, tiny_tok):
    task = validate(small, tiny_tok).task
    train = task[task.split == "train"]
    assert train.label.value_counts().to_dict() == {"card_arrival": 2, "lost_or_stolen_card": 2}
    assert not set(task[task.split == "eval"].user) & set(train.user)


def test_eval_leak_is_rejected(small, tiny_tok, tmp_path):
    _csv(tmp_path / "test.csv", ["where is my card,card_arrival", "my card was stolen,lost_or_stolen_card"])
    v = validate(small, tiny_tok)
    assert "eval_leak" in set(v.rejected.reason)


def test_too_long_rows_are_rejected_with_the_count(small, tiny_tok):
    v = validate(small.model_copy(update={"max_tokens": 30}), tiny_tok)
    too_long = v.rejected[v.rejected.reason == "too_long"]
    assert len(too_long) and "data.max_tokens=30" in too_long.iloc[0].detail


def test_missing_file_names_path_and_fix(small, tmp_path):
    cfg = small.model_copy(update={"train_file": str(tmp_path / "nope.csv")})
    with pytest.raises(DataError, match=r"nope.csv: file not found.*data\.\*"):
        validate(cfg, None)


def test_missing_column_names_header_and_key(small, tmp_path):
    _csv(tmp_path / "train.csv", ["hello,card_arrival"], header="utterance,category")
    with pytest.raises(DataError, match=r"\['text'\].*data.text_column"):
        validate(small, None)


def test_empty_file_fails(small, tmp_path):
    (tmp_path / "train.csv").write_text("text,category\n")
    with pytest.raises(DataError, match="train.csv: no data rows"):
        validate(small, None)


def test_no_rows_left_fails_with_pointer(small, tmp_path, tiny_tok):
    _csv(tmp_path / "train.csv", ["x,weather"])
    with pytest.raises(DataError, match="no train rows left.*rejected_rows"):
        validate(small, tiny_tok)


def test_hh_transcript_splits_into_turns():
    msgs = hh_prompt_messages("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:")
    assert msgs == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "help me"}]


def test_messages_use_empty_or_default_system_turn():
    rec = {"system": "", "user": "u", "assistant": "a"}
    assert messages(rec)[0] == {"role": "system", "content": ""}
    assert messages({**rec, "system": None}, with_answer=False) == [{"role": "user", "content": "u"}]


def test_default_data_validates(tiny_tok):
    v = validate(DataConfig(), tiny_tok)
    assert v.counts["split_train"] >= 77 * 15 and v.counts["split_eval"] == 200
    assert v.task.groupby("split").label.nunique()["train"] == 77
