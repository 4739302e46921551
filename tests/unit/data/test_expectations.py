"""Great Expectations suites over canonical records: each bad row is caught by the right expectation.

    .venv/bin/pytest -q tests/unit/data/test_expectations.py
"""

import json
import socket

import numpy as np
import pandas as pd
import pytest

from tuneline.data import expectations as X

LABELS = ["positive", "negative"]
NOT_NULL, IN_SET, REGEX = ("expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set",
                           "expect_column_values_to_match_regex")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Any network use by GX (import, context, validation) fails the tests of this module."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


def chat(*roles: str) -> str:
    return json.dumps([{"role": r, "content": f"{r} text"} for r in roles])


def cls_row(i: int, **kw) -> dict:
    row = {"source": "data/train.csv", "line": i + 2, "shape": "classification", "prompt": chat("system", "user"),
           "completion": "positive", "label": "positive", "chosen": None, "rejected": None}
    return {**row, **kw}


def pref_row(i: int, **kw) -> dict:
    row = {"source": "data/prefs.jsonl", "line": i + 1, "shape": "preference",
           "prompt": chat("user", "assistant", "user"), "completion": "", "label": None,
           "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
    return {**row, **kw}


def test_good_classification_frame_passes(capfd):
    res = X.run_suite(pd.DataFrame([cls_row(i) for i in range(5)]), "classification", LABELS)
    assert res.success and res.failures == [] and X.failing_rows(res) == {}
    assert res.statistics["unsuccessful_expectations"] == 0 and res.statistics["success_percent"] == 100.0
    assert res.statistics["evaluated_expectations"] >= 15 and res.statistics["rows"] == 5
    assert "Calculating Metrics" not in capfd.readouterr().err  # progress bars are off


def test_each_bad_classification_row_fails_its_expectation():
    rows = [cls_row(i) for i in range(8)]
    rows[1]["label"] = "neutral"                     # outside the allowed set
    rows[2]["completion"] = ""                       # empty answer
    rows[3]["label"] = np.nan                        # missing label
    rows[4]["prompt"] = chat("assistant", "user")    # conversation starts with the assistant
    rows[6]["completion"] = "  \n"                   # whitespace only
    rows[7]["prompt"] = chat("tool", "user")         # a role the chat template does not know
    res = X.run_suite(pd.DataFrame(rows), "classification", LABELS)
    assert not res.success
    assert X.failing_rows(res) == {
        1: [f"{IN_SET}(label)"],
        2: [f"{REGEX}(completion)"],
        3: [f"{NOT_NULL}(label)"],  # NaN is not also reported as off-set or of the wrong type
        4: [f"{REGEX}(role_order)"],
        6: [f"{REGEX}(completion)"],
        7: [f"{REGEX}(role_order)"],
    }
    by_name = {f["name"]: f for f in res.failures}
    assert by_name[f"{REGEX}(completion)"]["rows"] == [2, 6]
    assert by_name[f"{REGEX}(completion)"]["unexpected_count"] == 2
    assert by_name[f"{IN_SET}(label)"]["examples"] == ["neutral"]
    assert by_name[f"{REGEX}(role_order)"]["examples"] == ["assistant,user", "?tool,user"]
    assert res.statistics["failing_rows"] == 6


def test_rows_are_positional_whatever_the_index():
    rows = [pref_row(i) for i in range(4)]
    rows[2]["rejected"] = rows[2]["chosen"]
    rows[3]["rejected"] = rows[3]["chosen"] + "  "   # differs only in whitespace: still the same answer
    frame = pd.DataFrame(rows, index=[40, 30, 20, 10])
    res = X.run_suite(frame, "preference", None)
    assert X.failing_rows(res) == {2: [f"{IN_SET}(chosen_differs)"], 3: [f"{IN_SET}(chosen_differs)"]}


def test_preference_suite_checks_prompt_and_pairs():
    rows = [pref_row(i, shape="hh_preference") for i in range(4)]
    rows[0]["prompt"] = chat("user", "user")         # two user turns in a row
    rows[1]["prompt"] = "not json"
    rows[2]["chosen"] = None
    rows[3]["completion"] = "an answer"              # pairs keep completion empty
    res = X.run_suite(pd.DataFrame(rows), "hh_preference", None)
    assert X.failing_rows(res) == {
        0: [f"{REGEX}(role_order)"],
        1: [f"{IN_SET}(prompt_content_ok)", f"{REGEX}(role_order)"],
        2: [f"{NOT_NULL}(chosen)"],
        3: [f"{IN_SET}(completion)"],
    }


def test_duplicate_lines_and_fields_of_other_shapes():
    rows = [cls_row(i, shape="alpaca", label=None) for i in range(4)]
    rows[3]["line"] = rows[1]["line"]                # same file line twice: both copies are reported
    rows[0]["label"] = "positive"                    # only classification rows carry a label
    res = X.run_suite(pd.DataFrame(rows), "alpaca", None)
    assert X.failing_rows(res) == {0: ["expect_column_values_to_be_null(label)"],
                                   1: ["expect_compound_columns_to_be_unique(source,line)"],
                                   3: ["expect_compound_columns_to_be_unique(source,line)"]}


def test_html_report_and_raw_result():
    rows = [cls_row(i) for i in range(3)]
    rows[1]["label"] = "<b>neutral</b>"
    res = X.run_suite(pd.DataFrame(rows), "classification", LABELS)
    page = X.gx_html(res, "classification")
    assert "FAILED" in page and "1 of 3 rows" in page
    assert "expect_column_values_to_be_in_set" in page and "&lt;b&gt;neutral&lt;/b&gt;" in page
    assert "<script" not in page and "<link" not in page and "http" not in page
    ok = X.run_suite(pd.DataFrame([cls_row(0)]), "classification", LABELS)
    assert "PASSED" in X.gx_html(ok, "classification")
    raw = json.loads(json.dumps(res.raw, allow_nan=False))  # strict JSON: GX's NaN examples became null
    assert raw["success"] is False and raw["statistics"]["unsuccessful_expectations"] == 1
    nan = X.run_suite(pd.DataFrame([cls_row(0, label=np.nan)]), "classification", LABELS)
    json.dumps(nan.raw, allow_nan=False)


def test_column_level_failure_has_no_rows():
    frame = pd.DataFrame([cls_row(0), cls_row(1, line=None)])   # a missing line makes the column float
    res = X.run_suite(frame, "classification", LABELS)
    by_name = {f["name"]: f for f in res.failures}
    assert by_name["expect_column_values_to_be_of_type(line)"]["rows"] == []
    assert by_name["expect_column_values_to_be_of_type(line)"]["observed_value"] == "float64"
    assert X.failing_rows(res) == {1: [f"{NOT_NULL}(line)"]}


def test_empty_frame_and_bad_arguments():
    assert X.run_suite(pd.DataFrame([]), "alpaca", None).success
    with pytest.raises(ValueError, match="unknown shape"):
        X.suite_for("csv", None)
    with pytest.raises(ValueError, match="labels"):
        X.suite_for("classification", None)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['chosen', 'rejected'\]"):
        X.run_suite(pd.DataFrame([cls_row(0)]).drop(columns=["chosen", "rejected"]), "classification", LABELS)
