"""Shapes: detection from the columns, data.columns renames, canonical records, the prompt template check.

    .venv/bin/pytest -q tests/unit/data/test_shapes.py
"""

import json

import pytest
from pydantic import ValidationError

from tuneline.config import DataConfig
from tuneline.data.readers import DataError
from tuneline.data.shapes import check_template, detect_shape, hh_prompt_messages, normalize, strip_template
from tuneline.data.sources import locate, read_source
from tuneline.paths import PROJECT_ROOT

BAD = PROJECT_ROOT / "tests" / "data" / "bad"
LABELS = {"greet", "farewell"}


def read_records(path, rejected: list, **kwargs) -> list[dict]:
    return read_source(locate(str(path)), rejected, **kwargs).records


def test_columns_mapping_renames_and_rejects_name_the_source_column():
    rejected: list[dict] = []
    mapping = {"question": "instruction", "response": "output"}
    recs = read_records(BAD / "columns_missing.jsonl", rejected, columns=mapping)
    assert recs[0]["shape"] == "alpaca" and recs[0]["completion"] == "a"
    assert [(r["line"], r["reason"], r["field"]) for r in rejected] == [(2, "missing_field", "response")]
    assert json.loads(rejected[0]["row"]) == {"question": "q2", "response": None}
    with pytest.raises(DataError, match="'instrution', not a field of any shape: did you mean 'instruction'"):
        read_records(BAD / "columns_missing.jsonl", [], columns={"question": "instrution"})


def test_canonical_records_of_each_shape():
    recs = read_records(BAD / "hh_no_shared_prefix.jsonl", [], system_prompt="")
    assert recs[0]["prompt"] == [{"role": "system", "content": ""}, {"role": "user", "content": "Can you help me?"},
                                 {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "What is 2+2?"}]
    assert (recs[0]["chosen"], recs[0]["rejected"], recs[0]["completion"]) == ("Four.", "Five.", "")
    assert (recs[1]["chosen"], recs[1]["rejected"]) == ("4", "4, I think")
    pref = read_records(BAD / "preference.jsonl", [])
    user = [{"role": "user", "content": "2+2?"}]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in pref[:2]] == [(user, "4", "5")] * 2
    assert pref[2]["prompt"] == recs[0]["prompt"][1:] and pref[2]["chosen"] == "Four."  # an HH prompt is parsed too
    chat = read_records(BAD / "wrong_role_order.jsonl", [], system_prompt="default")
    assert chat[0]["prompt"] == [{"role": "system", "content": "default"}, {"role": "user", "content": "hi"}]
    assert chat[1]["prompt"][0] == {"role": "system", "content": "be brief"}  # the row's own system turn wins
    sharegpt = read_records(BAD / "unknown_role.jsonl", [])[1]
    assert (sharegpt["prompt"], sharegpt["completion"]) == ([{"role": "user", "content": "hi"}], "hello")
    cls = read_records(BAD / "unknown_label.csv", [], labels=LABELS, template="Intent: {text}")
    assert cls[0] == {"source": str(BAD / "unknown_label.csv"), "line": 2, "shape": "classification",
                      "prompt": [{"role": "user", "content": "Intent: hello"}], "completion": "greet",
                      "label": "greet", "chosen": None, "rejected": None,
                      "raw": {"text": "hello", "label": "greet"}, "key": "hello"}
    alp = read_records(BAD / "field_checks.jsonl", [])
    assert alp[1]["prompt"] == [{"role": "user", "content": "h\n\nctx"}] and alp[1]["completion"] == "i"


def test_detect_shape_and_bad_arguments():
    assert detect_shape({"conversations", "id"}, "f") == "messages"
    assert detect_shape({"chosen", "rejected"}, "f") == "hh_preference"
    assert detect_shape({"prompt", "chosen", "rejected"}, "f") == "preference"
    assert detect_shape({"text", "category"}, "f") == "classification"
    with pytest.raises(DataError, match="did you mean 'messages'"):
        normalize([], "mesages", rejected=[])
    with pytest.raises(DataError, match="must contain '{text}'"):
        normalize([], "classification", template="no slot", rejected=[])
    assert hh_prompt_messages("\n\nHuman: hi\n\nAssistant:") == [{"role": "user", "content": "hi"}]


def test_hh_transcript_splits_into_turns():
    msgs = hh_prompt_messages("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:")
    assert msgs == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "help me"}]


def test_one_template_check_for_the_config_and_the_reader():
    with pytest.raises(DataError, match="must use only {text}"):
        check_template("{label}: {text}")
    assert check_template("Intent:", need_text=False) == "Intent:"
    with pytest.raises(ValidationError, match="data.prompt_template 'Classify:' must contain '{text}'"):
        DataConfig(prompt_template="Classify:")
    with pytest.raises(ValidationError, match="must use only {text}"):
        DataConfig(prompt_template="{label}: {text}")
    assert strip_template("Intent: hello there", "Intent: {text}") == "hello there"
