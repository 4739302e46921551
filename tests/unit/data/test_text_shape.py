"""The text shape (continued pretraining): .txt files and a document column read into documents, checked as
documents, and a config that refuses what raw text cannot do.

    .venv/bin/pytest -q tests/unit/data/test_text_shape.py
"""

import json
import random

import pytest

from tuneline.cli import main
from tuneline.config import ConfigError, DataConfig, load
from tuneline.data.readers import DataError
from tuneline.data.sources import locate, read_source
from tuneline.data.validate import validate
from tuneline.paths import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "configs" / "examples" / "continued-pretraining.yaml"
PAIRS = "data.preference.file=data/hh_rlhf/helpful-base_test.prompt_chosen_rejected.jsonl"
WORDS = ["crown", "sword", "night", "king", "queen", "storm", "honour", "grave", "love", "blood", "moon", "fool",
         "daughter", "tongue", "heaven", "ghost", "fortune", "rose", "wind", "lord", "oath", "tears", "sleep"]
# Distinct speeches (seeded word salad), so dedup, leakage and contamination flag only what a test plants.
SPEECHES = [f"Speaker {i}:\n" + " ".join(random.Random(i).choices(WORDS, k=18)) for i in range(12)]


def _read(path, **how):
    rejected: list = []
    read = read_source(locate(str(path)), rejected, **how)
    return read, rejected


def test_a_txt_file_is_one_document_per_blank_line_block(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text("First:\nline one\nline two\n\n\n  \nSecond:\r\nits line\n\nThird.")
    read, rejected = _read(path, shape="text")
    assert read.shape == "text" and not rejected
    assert [r["completion"] for r in read.records] == ["First:\nline one\nline two", "Second:\nits line", "Third."]
    assert [r["line"] for r in read.records] == [1, 7, 10]  # where each block starts
    assert all(r["prompt"] == [] and r["key"] == r["completion"] for r in read.records)


def test_a_directory_of_txt_files_is_one_document_per_file(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Para one.\n\nPara two of the same document.")
    (tmp_path / "docs" / "b.txt").write_text("Another document.")
    (tmp_path / "docs" / "empty.txt").write_text("  \n")
    read, rejected = _read(tmp_path / "docs", shape="text")
    assert read.shape == "text" and read.rows_in == 3
    assert [r["completion"] for r in read.records] == ["Para one.\n\nPara two of the same document.",
                                                       "Another document."]
    assert [(r["reason"], r["field"]) for r in rejected] == [("empty_field", "text")]


def test_a_jsonl_column_maps_to_text_and_text_is_never_guessed(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": s, "url": f"u{i}"}) for i, s in enumerate(SPEECHES[:3])))
    read, _ = _read(path, shape="text", columns={"body": "text"})
    assert read.shape == "text" and [r["completion"] for r in read.records] == SPEECHES[:3]
    # Raw text changes the whole run (metric, DPO): auto never picks it, and says how to.
    with pytest.raises(DataError, match=r"columns \['text', 'url'\].*continued pretraining \(data.shape: text\)"):
        _read(path, columns={"body": "text"})
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(json.dumps({"text": "a", "label": "b"}))
    assert _read(labelled)[0].shape == "classification"


def test_a_binary_txt_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"abc\0def")
    with pytest.raises(DataError, match=r"x.txt: NUL bytes"):
        _read(tmp_path / "x.txt")


def test_validate_checks_documents_and_holds_out_documents(tmp_path, tiny_tok):
    path = tmp_path / "play.txt"
    path.write_text("\n\n".join(SPEECHES + [SPEECHES[0], "Hi."]))  # one exact duplicate, one too short
    cfg = DataConfig(train_file=str(path), test_file=None, shape="text", labels_file=None, rows_per_label=None,
                     eval_rows=3, min_tokens=4, max_tokens=16)  # documents longer than a block are kept
    from tuneline.config import DPOData

    v = validate(cfg, tiny_tok, dpo=DPOData(enabled=False, mine_mistakes=False))
    assert v.gate_failures == []
    assert v.counts["reasons"] == {"duplicate": 1, "too_short": 1}
    assert v.checks["hygiene_train"]["flagged"] == 0 and v.checks["expectations_train"]["flagged"] == 0
    assert dict(v.task.split.value_counts()) == {"train": 9, "eval": 3}
    assert set(v.task["shape"]) == {"text"} and set(v.task["prompt"]) == {"[]"}
    from tuneline.dashboard import data_report

    assert "tuneline_text" in str(data_report(v, "").model_dump())  # the data report renders the text suite
    # Raw text cannot be mined for DPO pairs: no mining split, and the gate says why.
    mined = validate(cfg, tiny_tok, dpo=DPOData(enabled=True, mine_mistakes=True))
    assert "split_mining" not in mined.counts and any("nothing to mine" in f for f in mined.gate_failures)


def test_config_check_accepts_the_example_and_refuses_text_with_dpo(capsys):
    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert "data.shape: \"text\"" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="data.shape is text.*Set dpo.enabled: false"):
        load(EXAMPLE, ["dpo.enabled=true"])
    with pytest.raises(ConfigError, match="Set dpo.mine_mistakes: false"):
        load(EXAMPLE, ["dpo.enabled=true", PAIRS])
    load(EXAMPLE, ["dpo.enabled=true", "dpo.mine_mistakes=false", PAIRS])  # DPO on the user's pairs alone
    with pytest.raises(ConfigError, match="set evaluate.metric: perplexity"):
        load(EXAMPLE, ["evaluate.metric=exact_match"])
    with pytest.raises(ConfigError, match="set data.shape: text"):
        load(PROJECT_ROOT / "configs" / "default.yaml", ["evaluate.metric=perplexity"])
