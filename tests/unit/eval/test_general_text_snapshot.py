"""evaluate.perplexity's file is part of the lineage: read once into a GeneralText (texts, sha256, quarantined
lines), keyed by its hash, and scored from that snapshot; bad lines are quarantined by file:line, never a
traceback. The cache behaviour in a real ZenML run is tests/pipeline/test_general_text_cache.py.

    .venv/bin/pytest -q tests/unit/eval/test_general_text_snapshot.py
"""

import json

import pytest

from tuneline.config import EvaluateConfig, ExportConfig, PerplexityConfig
from tuneline.data.readers import DataError
from tuneline.eval.perplexity import general_text_sha256, general_texts, read_general_text
from tuneline.export.gate import ExportChecks
from tuneline.paths import PROJECT_ROOT

EVAL_TEXT = PROJECT_ROOT / "tests" / "data" / "bad" / "eval_text"


def _cfg(path, **kw) -> PerplexityConfig:
    return PerplexityConfig(file=str(path), **{"field": "chosen", "rows": 5, "min_words": 3} | kw)


def _pairs(path, answers):
    path.write_text("".join(json.dumps({"prompt": "q", "chosen": a, "rejected": "no"}) + "\n" for a in answers))
    return path


def test_editing_the_file_changes_the_key_the_pipeline_passes_and_the_snapshot(tmp_path):
    path = _pairs(tmp_path / "general.jsonl", ["one two three four", "five six seven eight"])
    cfg = _cfg(path)
    key, snap = general_text_sha256(cfg), read_general_text(cfg)
    assert key == snap.sha256 and len(key) == 64 and snap.bytes == path.stat().st_size
    assert general_text_sha256(cfg) == key and read_general_text(cfg) == snap  # unchanged file: same key, same snapshot
    _pairs(path, ["one two three four", "five six seven nine"])
    assert general_text_sha256(cfg) != key and read_general_text(cfg).sha256 != key
    assert general_text_sha256(None) == "" and general_text_sha256(_cfg(tmp_path / "gone.jsonl")).startswith("missing:")


@pytest.mark.parametrize(("name", "line", "reason"), [
    ("json_list_line.jsonl", 2, "not_an_object"),
    ("invalid_utf8_line.jsonl", 2, "invalid_utf8"),
    ("chosen_missing.jsonl", 2, "missing_field"),
    ("chosen_number.jsonl", 2, "wrong_type"),
    ("gzip_bomb.jsonl.gz", 2, "line_too_large"),
])
def test_a_bad_line_is_quarantined_with_its_line_and_the_rest_is_scored(name, line, reason):
    snap = read_general_text(_cfg(EVAL_TEXT / name))
    assert [(r["line"], r["reason"]) for r in snap.rejected] == [(line, reason)]
    assert snap.rejected[0]["source"].endswith(name) and snap.texts == [
        "A long helpful answer number 1.", "A long helpful answer number 3."]
    assert snap.input_rows == snap.kept + snap.short + len(snap.rejected) == 3


def test_blank_lines_are_skipped_and_too_few_texts_name_the_file_and_the_lines():
    assert read_general_text(_cfg(EVAL_TEXT / "blank_line.jsonl")).input_rows == 2
    for name in ("all_lines_bad.jsonl", "utf16.jsonl"):
        with pytest.raises(DataError, match=rf"{name}: fewer than 2 'chosen' texts.*{name}:1: "):
            read_general_text(_cfg(EVAL_TEXT / name))
    with pytest.raises(DataError, match="is a directory, not a file"):
        read_general_text(_cfg(EVAL_TEXT))


def test_steps_score_the_snapshot_not_the_file(tmp_path):
    path = _pairs(tmp_path / "general.jsonl", ["one two three four", "five six seven eight", "too short"])
    evaluate = EvaluateConfig(perplexity=_cfg(path))
    snap = read_general_text(evaluate.perplexity)
    assert snap.short == 1 and snap.texts == ["one two three four", "five six seven eight"]
    path.unlink()  # what a step reads is the snapshot: the file is not opened again
    assert general_texts(snap.pin(evaluate)) == snap.texts
    checks = ExportChecks.of(evaluate, ExportConfig())
    assert general_texts(snap.pin(checks)) == snap.texts
    assert snap.pin(EvaluateConfig(perplexity=None)).perplexity is None
    with pytest.raises(ValueError, match="general_text snapshot was read with"):
        snap.pin(EvaluateConfig(perplexity=_cfg(path, rows=2)))
