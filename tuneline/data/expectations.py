"""Great Expectations (GX Core 1.x) suites for the canonical records, one suite per input shape.

    tuneline validate configs/default.yaml   # runs each source's suite (data.checks.expectations)

`run_suite(records, shape, labels)` checks a canonical-record DataFrame (columns in COLUMNS) and
returns a GXResult; `failing_rows(result)` maps positional row index -> failed expectation names
(the caller quarantines those rows), `gx_html(result, shape)` renders it for the dashboard and
`result.raw` is the GX validation result as plain JSON for an artifact.

Runs offline: GX is imported lazily (it takes seconds), with analytics off, progress bars off, and
one in-memory (ephemeral) context per process.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import great_expectations as gx

COLUMNS = ["source", "line", "shape", "prompt", "completion", "label", "chosen", "rejected"]
SHAPES = ("alpaca", "messages", "prompt_completion", "preference", "hh_preference", "classification", "text")
PREFERENCE_SHAPES = ("preference", "hh_preference")
# Optional system turn, then user/assistant alternating, ending with the user (the answer is separate).
ROLE_ORDER = r"^(?:system,)?user(?:,assistant,user)*$"  # non-capturing: pandas warns about groups in str.contains
# A text record (a document for continued pretraining) has no turns at all: its prompt is "[]".
NO_TURNS = r"^$"
NOT_BLANK = r"\S"  # at least one non-whitespace character ("" and "  \n" both fail)
BAD_PROMPT = "<not a JSON list of messages>"


@dataclass
class GXResult:
    """What a suite run found. `rows` are positional indices (0..len-1) into the frame that was checked.

    A failure with no rows is column-level (e.g. `line` is float because some lines are missing):
    that is a bug in the normalizer, not a bad row, and no row index can be quarantined for it.
    """

    success: bool
    statistics: dict
    failures: list[dict] = field(default_factory=list)  # expectation, name, column, unexpected_count, rows, examples
    raw: dict = field(default_factory=dict)  # ExpectationSuiteValidationResult.to_json_dict(), NaN -> None


@functools.cache
def _gx():
    """Import GX once, offline and quiet (env vars must be set before the import)."""
    # GX 1.24 no longer ships analytics code, but older 1.x read this before any event is sent.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


@functools.cache
def _context():
    """One in-memory (ephemeral) GX context per process: creating it is cheap, the import is not."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Otherwise every validation draws a tqdm "Calculating Metrics" bar on stderr.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


@functools.cache
def _batch_definition():
    """The pandas data source's whole-dataframe batch definition; each run passes its own frame."""
    asset = _context().data_sources.add_pandas("tuneline").add_dataframe_asset("records")
    return asset.add_batch_definition_whole_dataframe("all_rows")


def suite_for(shape: str, labels: list[str] | None) -> gx.ExpectationSuite:
    """The expectations a canonical-record frame of `shape` must meet (run it through run_suite:
    `role_order`, `prompt_content_ok` and `chosen_differs` are derived columns that it adds)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if shape == "classification" and not labels:
        raise ValueError("shape 'classification' needs the allowed labels (data.labels_file)")
    gx = _gx()
    _context()  # GX 1.x: ExpectationSuite() raises DataContextRequiredError until a context exists
    E = gx.expectations
    preference = shape in PREFERENCE_SHAPES
    required = ["source", "line", "shape", "prompt", "completion"]
    required += (["chosen", "rejected"] if preference else []) + (["label"] if shape == "classification" else [])
    unused = ([] if shape == "classification" else ["label"]) + ([] if preference else ["chosen", "rejected"])
    # The prompt's text is checked through role_order / prompt_content_ok; completion is "" for pairs.
    blank_checked = [c for c in required
                     if c not in ("line", "shape", "prompt") and not (preference and c == "completion")]

    exps = [E.ExpectColumnValuesToNotBeNull(column=c) for c in required]
    exps += [E.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in required if c != "line"]
    exps += [E.ExpectColumnValuesToMatchRegex(column=c, regex=NOT_BLANK) for c in blank_checked]
    exps += [E.ExpectColumnValuesToBeOfType(column="line", type_="int"),
             E.ExpectColumnValuesToBeInSet(column="shape", value_set=[shape]),
             E.ExpectCompoundColumnsToBeUnique(column_list=["source", "line"]),
             E.ExpectColumnValuesToMatchRegex(column="role_order", regex=NO_TURNS if shape == "text" else ROLE_ORDER),
             E.ExpectColumnValuesToBeInSet(column="prompt_content_ok", value_set=[True])]
    if preference:  # the pair's answers live in chosen/rejected
        exps += [E.ExpectColumnValuesToBeInSet(column="completion", value_set=[""]),
                 E.ExpectColumnValuesToBeInSet(column="chosen_differs", value_set=[True])]
    if shape == "classification":
        exps.append(E.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)))
    # Fields of other shapes must stay empty: a value there means the normalizer mixed shapes up.
    exps += [E.ExpectColumnValuesToBeNull(column=c) for c in unused]

    suite = gx.ExpectationSuite(name=f"tuneline_{shape}")
    for e in exps:
        suite.add_expectation(e)
    return suite


def _role_order(prompt) -> str | None:
    if not isinstance(prompt, str):
        return None  # a null prompt is reported by not_null alone (GX skips None in the other checks)
    try:
        msgs = json.loads(prompt)
    except (TypeError, ValueError):
        return BAD_PROMPT
    if not isinstance(msgs, list):
        return BAD_PROMPT
    return ",".join(_role(m.get("role") if isinstance(m, dict) else None) for m in msgs)


def _role(role) -> str:
    # "?" marks anything else (e.g. "tool", "user,assistant", "user\n"), so it can never match ROLE_ORDER.
    return role if role in ("system", "user", "assistant") else f"?{role}"


def _content_ok(prompt) -> bool | None:
    if not isinstance(prompt, str):
        return None
    try:
        msgs = json.loads(prompt)
    except (TypeError, ValueError):
        return False
    # An empty system turn is allowed: it is how a config replaces the template's default system prompt.
    return isinstance(msgs, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and (m["content"].strip() or m.get("role") == "system")
        for m in msgs)


def _chosen_differs(chosen, rejected):
    # Null chosen/rejected is reported by not_null alone; GX skips None in value-set checks.
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return None
    return chosen.strip() != rejected.strip()  # a pair that differs only in whitespace teaches nothing


def with_derived(records: pd.DataFrame) -> pd.DataFrame:
    """A copy with positional index 0..n-1 (GX reports index labels) and the derived check columns."""
    df = records.reset_index(drop=True)
    df["role_order"] = pd.Series([_role_order(p) for p in df["prompt"]], dtype=object)
    df["prompt_content_ok"] = pd.Series([_content_ok(p) for p in df["prompt"]], dtype=object)
    df["chosen_differs"] = pd.Series([_chosen_differs(c, r) for c, r in zip(df["chosen"], df["rejected"])],
                                     dtype=object)
    return df


def _clean(obj):
    """JSON-safe copy: NaN/inf (GX reports missing values as float NaN) -> None, numpy scalars -> Python."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _column(kwargs: dict) -> str:
    return kwargs.get("column") or ",".join(kwargs.get("column_list") or [])


def _name(raw_result: dict) -> str:
    """"type(column)" of one result in `raw`, as in GXResult.failures[*]["name"]."""
    cfg = raw_result["expectation_config"]
    return f"{cfg['type']}({_column(cfg['kwargs'])})"


def _exception(r) -> str | None:
    # GX puts {raised_exception, exception_message} either at the top or under one key per metric.
    info = r.exception_info or {}
    found = [info] + [v for v in info.values() if isinstance(v, dict)]
    return next((i.get("exception_message") or "error" for i in found if i.get("raised_exception")), None)


def _failure(r) -> dict:
    cfg, res = r.expectation_config, r.result or {}
    column = _column(cfg.kwargs)
    return {"expectation": cfg.type, "name": f"{cfg.type}({column})", "column": column,
            "unexpected_count": int(res.get("unexpected_count") or 0),
            "rows": [int(i) for i in res.get("unexpected_index_list") or []],
            "examples": _clean(list(res.get("partial_unexpected_list") or [])[:5]),
            "observed_value": _clean(res.get("observed_value"))}


def run_suite(records: pd.DataFrame, shape: str, labels: list[str] | None) -> GXResult:
    """Validate a canonical-record frame (one row per record) against suite_for(shape, labels)."""
    missing = [c for c in COLUMNS if c not in records.columns]
    if missing and len(records):
        raise ValueError(f"records lack column(s) {missing}; build them with all of {COLUMNS} (None where unused)")
    # An empty frame (no records) may have no columns; object dtype, since reindex would make them float.
    records = records.reindex(columns=list(records.columns) + missing).astype({c: object for c in missing})
    suite = suite_for(shape, labels)
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": with_derived(records)})
    # COMPLETE: every failing row's index, not just the first 20 (SUMMARY's partial list).
    result = batch.validate(suite, result_format="COMPLETE")
    errors = [f"{r.expectation_config.type}({_column(r.expectation_config.kwargs)}): {e}"
              for r in result.results if (e := _exception(r))]
    if errors:  # a check that crashed did not check anything: never read that as a pass or a row failure
        raise RuntimeError("Great Expectations could not evaluate: " + "; ".join(errors)
                           + ". The records or the suite are malformed: fix tuneline/data/expectations.py or the caller")
    failures = sorted((_failure(r) for r in result.results if not r.success), key=lambda f: f["name"])
    stats = {**result.statistics, "rows": len(records),
             "failing_rows": len({i for f in failures for i in f["rows"]})}
    return GXResult(success=bool(result.success), statistics=_clean(stats), failures=failures,
                    raw=_clean(result.to_json_dict()))


def failing_rows(result: GXResult) -> dict[int, list[str]]:
    """Row index -> names of the expectations it failed, e.g. {3: ["expect_column_values_to_be_in_set(label)"]}."""
    rows: dict[int, list[str]] = {}
    for f in result.failures:
        for i in f["rows"]:
            rows.setdefault(i, []).append(f["name"])
    return dict(sorted(rows.items()))


def _cell(value, limit: int = 60) -> str:
    """A short example value: strings quoted (so "" and whitespace show), everything else as JSON."""
    text = repr(value[:limit]) + ("…" if len(value) > limit else "") if isinstance(value, str) else \
        json.dumps(value, ensure_ascii=False, default=str)[:limit]
    return html.escape(text)


def gx_html(result: GXResult, shape: str) -> str:
    """A self-contained HTML page (inline styles only): verdict, statistics, one row per expectation."""
    s = result.statistics
    verdict = (f"<p style='color:#070'><b>PASSED</b>: all {s.get('evaluated_expectations', 0)} expectations met</p>"
               if result.success else
               f"<p style='color:#a00'><b>FAILED</b>: {s.get('unsuccessful_expectations', 0)} of "
               f"{s.get('evaluated_expectations', 0)} expectations failed on {s.get('failing_rows', 0)} of "
               f"{s.get('rows', 0)} rows</p>")
    stats = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.1f}</td></tr>" if isinstance(v, float) else
                    f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in s.items())
    failed = {f["name"]: f for f in result.failures}
    rows = []
    for r in sorted(result.raw.get("results", []), key=lambda r: (r.get("success", False), _name(r))):
        f = failed.get(_name(r))
        examples = "" if f is None else ", ".join(_cell(x) for x in f["examples"][:3]) or (
            _cell(f["observed_value"]) if f["observed_value"] is not None else "")
        rows.append(f"<tr><td style='color:{'#070' if f is None else '#a00'}'>{'pass' if f is None else 'FAIL'}</td>"
                    f"<td>{html.escape(r['expectation_config']['type'])}</td>"
                    f"<td>{html.escape(_column(r['expectation_config']['kwargs']))}</td>"
                    f"<td>{0 if f is None else f['unexpected_count']}</td><td>{examples}</td></tr>")
    return f"""<html><body style="font-family:sans-serif">
<h3>Expectation suite tuneline_{html.escape(shape)}</h3>{verdict}
<table border=1 cellpadding=4>{stats}</table>
<table border=1 cellpadding=4 style="margin-top:8px"><tr><th>status</th><th>expectation</th><th>column</th>
<th>unexpected</th><th>examples</th></tr>{"".join(rows)}</table>
<p style="color:#666">Derived columns: role_order (prompt roles joined by ",", must match {html.escape(ROLE_ORDER)}),
prompt_content_ok (every prompt turn has non-blank text), chosen_differs (chosen != rejected after strip).</p>
</body></html>"""
