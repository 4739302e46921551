"""data.preference: the user's pairs in any columns, read and quarantined like the training data, and reported.

    .venv/bin/pytest -q tests/unit/data/test_preference_data.py
"""

import json
import random
import warnings

import pytest
from pydantic import ValidationError

from tuneline.config import OLD_PREFERENCE_FILE, DataConfig
from tuneline.data.readers import DataError
from tuneline.data.validate import validate

WORDS = ("apple", "river", "stone", "cloud", "bread", "music", "paper", "green", "quick", "silver", "orange", "window",
         "garden", "yellow", "pencil", "market", "candle", "forest", "planet", "rocket", "violin", "turtle", "basket",
         "winter", "summer")
SE_COLUMNS = {"question": "prompt", "response_j": "chosen", "response_k": "rejected"}


def _words(seed: int, n: int) -> str:
    return " ".join(random.Random(seed).choices(WORDS, k=n))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task(tmp_path) -> dict:
    """A small alpaca task around the pairs (its rows are not under test here)."""
    rows = [{"instruction": _words(i, 8), "output": f"answer {i}"} for i in range(12)]
    return {"train_file": str(_jsonl(tmp_path / "task.jsonl", rows)), "test_file": None, "labels_file": None,
            "eval_rows": 2, "mining_rows": 0, "checks": {"contamination_benchmarks": [], "near_duplicate": "report"}}


def _stackexchange(tmp_path):
    """StackExchange-style pairs: response_j is preferred to response_k. Lines 3 and 5 are identical pairs
    (exactly, and after normalization), line 7 has no response_k."""
    rows = [{"qid": i, "question": f"How do I {_words(i, 5)}?", "response_j": _words(100 + i, 4 + i % 5),
             "response_k": _words(200 + i, 3 + i % 3), "date": "2023-01-01"} for i in range(8)]
    rows[2]["response_k"] = rows[2]["response_j"]
    rows[4]["response_k"] = "  " + rows[4]["response_j"].upper() + " "
    rows[6]["response_k"] = None
    return _jsonl(tmp_path / "se.jsonl", rows), rows


def test_stackexchange_columns_map_to_pairs_and_the_report_covers_them(tmp_path, tiny_tok):
    path, rows = _stackexchange(tmp_path)
    cfg = DataConfig(**_task(tmp_path), preference={"file": str(path), "columns": SE_COLUMNS})
    v = validate(cfg, tiny_tok)
    prefs, c = v.preferences, v.counts
    good = [r for i, r in enumerate(rows) if i not in (2, 4, 6)]
    assert (c["pairs_in"], c["pairs_rejected"], c["pairs_used"], c["pairs_unused"]) == (8, 3, 5, 0)
    # j is chosen, k rejected, the question the last (user) turn of the prompt
    by_line = prefs.set_index("line")
    for i, r in enumerate(rows):
        if r in good:
            assert by_line.loc[i + 1, "chosen"] == r["response_j"] and by_line.loc[i + 1, "rejected"] == r["response_k"]
            assert json.loads(by_line.loc[i + 1, "prompt"])[-1] == {"role": "user", "content": r["question"]}
    # identical pairs: the statistics and the rejects agree (both the exact and the normalized one)
    rej = v.rejected[v.rejected.source.str.endswith("se.jsonl")]
    assert c["identical_pairs"] == 2 == int((v.rejected.reason == "identical_pair").sum())
    assert sorted(rej[rej.reason == "identical_pair"].line) == [3, 5]
    missing = rej[rej.line == 7].iloc[0]
    assert missing.field == "response_k" and "response_k" in missing.row  # named as the file names it
    # length bias of the pairs DPO gets
    longer = sum(len(r["response_j"]) > len(r["response_k"]) for r in good)
    assert c["chosen_longer_share"] == round(longer / 5, 3)
    assert c["chosen_mean_chars"] == round(sum(len(r["response_j"]) for r in good) / 5, 1)
    assert c["rejected_mean_chars"] == round(sum(len(r["response_k"]) for r in good) / 5, 1)
    # the pairs' rejects are not task rows: the task's accounting is what it is without them
    alone = validate(DataConfig(**_task(tmp_path)), tiny_tok).counts
    assert (c["input_rows"], c["dropped"], c["accepted"]) == (alone["input_rows"], alone["dropped"], alone["accepted"])


def test_identical_pair_counts_agree_on_prompt_chosen_rejected_files(tmp_path, tiny_tok):
    """Issue 17: the statistics said identical_pairs: 0 while the rejects listed identical_pair: 1."""
    rows = [{"prompt": _words(i, 6), "chosen": _words(50 + i, 5), "rejected": _words(80 + i, 4)} for i in range(5)]
    rows[1]["rejected"] = rows[1]["chosen"]
    cfg = DataConfig(**_task(tmp_path), preference={"file": str(_jsonl(tmp_path / "p.jsonl", rows))})
    v = validate(cfg, tiny_tok)
    assert v.counts["identical_pairs"] == 1 == int((v.rejected.reason == "identical_pair").sum())
    assert v.counts["pairs_used"] == 4


def test_rows_keeps_the_shortest_pairs(tmp_path, tiny_tok):
    path, _ = _stackexchange(tmp_path)
    cfg = DataConfig(**_task(tmp_path), preference={"file": str(path), "columns": SE_COLUMNS, "rows": 2})
    v = validate(cfg, tiny_tok)
    assert (v.counts["pairs_used"], v.counts["pairs_unused"]) == (2, 3) and len(v.preferences) == 2


def test_a_file_that_is_not_pairs_is_refused_naming_the_key(tmp_path, tiny_tok):
    task = _task(tmp_path)
    with pytest.raises(DataError, match=r"task.jsonl: its rows are alpaca.*data.preference.file.*data.preference.columns"):
        validate(DataConfig(**task, preference={"file": task["train_file"]}), tiny_tok)


def test_column_errors_name_the_preference_keys(tmp_path, tiny_tok):
    path, _ = _stackexchange(tmp_path)
    with pytest.raises(DataError, match=r"cannot tell the data shape.*Set data.preference.shape.*data.preference.columns"):
        validate(DataConfig(**_task(tmp_path), preference={"file": str(path)}), tiny_tok)
    wrong = SE_COLUMNS | {"answer_x": "completion"}
    with pytest.raises(DataError, match=r"data.preference.columns maps 'answer_x', which is not a column"):
        validate(DataConfig(**_task(tmp_path), preference={"file": str(path), "columns": wrong}), tiny_tok)


def test_old_keys_are_aliases_with_a_warning_naming_the_new_key():
    with pytest.warns(FutureWarning, match=r"data.preference_rows is deprecated: use data.preference.rows"):
        cfg = DataConfig(preference_rows=4)
    assert (cfg.preference.file, cfg.preference.rows) == (OLD_PREFERENCE_FILE, 4)
    with pytest.warns(FutureWarning) as got:
        cfg = DataConfig(preference_file="mine.jsonl", preference_rows=3)
    assert {str(w.message).split(":")[0] for w in got} == {"data.preference_file is deprecated",
                                                           "data.preference_rows is deprecated"}
    assert "use data.preference.file" in str(got[0].message)
    assert (cfg.preference.file, cfg.preference.rows) == ("mine.jsonl", 3)
    with pytest.warns(FutureWarning):
        assert DataConfig(preference_rows=0).preference is None  # 0 rows meant no user pairs
    with pytest.warns(FutureWarning), pytest.raises(ValidationError, match=r"remove the old keys"):
        DataConfig(preference_rows=3, preference={"file": "mine.jsonl"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DataConfig().preference is None  # the default warns about nothing


def test_snapshot_copies_the_preference_file_under_its_key(tmp_path, tiny_tok):
    from tuneline.data.snapshot import snapshot

    path, _ = _stackexchange(tmp_path)
    cfg = DataConfig(**_task(tmp_path), preference={"file": str(path), "columns": SE_COLUMNS})
    raw = snapshot(cfg, tmp_path / "raw")
    assert raw.files["preference.file"]["name"] == str(path)
    path.write_text("")  # read from the copy, named as configured
    v = validate(cfg, tiny_tok, copies=raw.copies())
    assert v.counts["pairs_used"] == 5 and set(v.preferences.source) == {str(path)}
