"""Input formats: every file kind read through read_source into records, every bad row a reject, bad files named.

    .venv/bin/pytest -q tests/unit/data/test_readers.py

The corpus in tests/data/bad/ is written by tests/data/bad/make_corpus.py; CASES and ERRORS below
say what each file must give.
"""

import csv
import gzip
import importlib.util
import io
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneline.data.readers import DataError
from tuneline.data.shapes import SHAPES
from tuneline.data.sources import locate, read_rows, read_source
from tuneline.paths import PROJECT_ROOT

BAD = PROJECT_ROOT / "tests" / "data" / "bad"
LABELS = {"greet", "farewell"}


def read_records(path, rejected: list, **kwargs) -> list[dict]:
    """The records of one file, read as the pipeline reads a source."""
    return read_source(locate(str(path)), rejected, **kwargs).records


def rows_of(path, rejected: list) -> list[dict]:
    return read_rows(locate(str(path)), rejected)


# file, read_records kwargs, {line: reason} of the rejects, records that must survive.
CASES = [
    ("bad_json.jsonl", {}, {2: "bad_json"}, 2),
    ("bom.jsonl", {}, {}, 2),
    ("crlf.jsonl", {}, {}, 2),
    ("bom_crlf.csv", {}, {}, 2),
    ("blank_lines.jsonl", {}, {}, 2),
    ("jsonl_named.json", {}, {}, 2),
    ("mixed_shapes.jsonl", {}, {2: "shape_mismatch", 4: "shape_mismatch"}, 2),
    ("field_checks.jsonl", {}, {2: "missing_field", 3: "wrong_type", 4: "empty_field", 5: "missing_field",
                                6: "wrong_type", 7: "nan"}, 2),
    ("wrong_role_order.jsonl", {}, {2: "wrong_role_order", 3: "wrong_role_order", 4: "wrong_role_order"}, 2),
    ("missing_assistant_turn.jsonl", {}, {2: "missing_assistant_turn", 3: "missing_assistant_turn",
                                          4: "missing_assistant_turn"}, 1),
    ("unknown_role.jsonl", {}, {2: "unknown_role", 3: "unknown_role"}, 2),
    ("bad_messages.jsonl", {}, {2: "bad_messages", 3: "bad_messages", 4: "bad_messages", 5: "bad_messages"}, 1),
    ("unknown_label.csv", {"labels": LABELS}, {3: "unknown_label"}, 2),
    ("nan.csv", {}, {3: "nan", 4: "empty_field"}, 2),
    ("multiline.csv", {}, {4: "nan"}, 2),
    ("ragged.csv", {}, {3: "bad_csv"}, 2),
    ("huge_line.jsonl.gz", {}, {2: "line_too_large"}, 2),
    ("binary.jsonl", {}, {2: "binary"}, 2),
    ("invalid_utf8.jsonl", {}, {2: "invalid_utf8"}, 2),
    ("surrogate.jsonl", {}, {2: "invalid_utf8"}, 2),
    ("not_an_object.jsonl", {}, {2: "not_an_object", 3: "not_an_object", 4: "not_an_object", 5: "not_an_object"}, 2),
    ("wrapped.json", {}, {2: "not_an_object"}, 2),
    ("parquet_null.parquet", {}, {2: "missing_field", 4: "missing_field"}, 2),
    ("hh_no_shared_prefix.jsonl", {}, {2: "no_shared_prefix", 3: "identical_pair"}, 2),
    ("preference.jsonl", {}, {3: "identical_pair", 4: "missing_assistant_turn"}, 3),
]

# file, read_records kwargs, a substring of the DataError (which must also name the path).
ERRORS = [
    ("empty.jsonl", {}, "no rows"),
    ("blank_only.jsonl", {}, "no rows"),
    ("header_only.csv", {}, "no data rows"),
    ("all_bad.jsonl", {}, "no readable rows"),
    ("corrupt.jsonl.gz", {}, "not a valid gzip file"),
    ("corrupt.parquet", {}, "not readable as Parquet"),
    ("unknown_shape.jsonl", {}, "cannot tell the data shape from the columns ['answer', 'question']"),
    ("ambiguous_shape.jsonl", {}, "fit several shapes (prompt_completion, preference); set data.shape"),
    ("csv_missing_column.csv", {"shape": "classification"}, "no column label/category needed by shape classification"),
    ("csv_missing_column.csv", {}, "cannot tell the data shape from the columns ['text']"),
    ("columns_missing.jsonl", {"columns": {"question": "instruction", "answer": "output"}},
     "maps 'answer', which is not a column; columns found: ['question', 'response']"),
    ("top_level_scalar.json", {}, "the top level is a JSON int"),
    ("two_lists.json", {}, "2 list-valued keys"),
    ("unsupported.txt", {}, "columns ['text']. Expected"),  # .txt reads as raw text, which is never guessed
    ("does_not_exist.jsonl", {}, "file not found"),
]


def _rows_in_file(path: Path) -> int:
    """Rows a file holds, counted without tuneline (blank lines are not rows)."""
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    data = path.read_bytes()
    data = gzip.decompress(data) if path.suffix == ".gz" else data
    if path.name.endswith(".csv"):
        return sum(1 for r in csv.reader(io.StringIO(data.decode("utf-8-sig", "replace"), newline="")) if r) - 1
    if path.name.endswith(".json"):
        try:
            obj = json.loads(data)
            return len(obj if isinstance(obj, list) else next(v for v in obj.values() if isinstance(v, list)))
        except json.JSONDecodeError:
            pass
    return sum(1 for line in data.split(b"\n") if line.strip())


@pytest.mark.parametrize("name,kwargs,reasons,good", CASES, ids=[c[0] for c in CASES])
def test_bad_rows_are_rejected_and_good_rows_survive(name, kwargs, reasons, good):
    rejected: list[dict] = []
    records = read_records(BAD / name, rejected, **kwargs)
    assert {r["line"]: r["reason"] for r in rejected} == reasons, rejected
    assert len(records) == good
    assert len(records) + len(rejected) == _rows_in_file(BAD / name)
    assert all(r["source"] == str(BAD / name) for r in records + rejected)
    assert not {r["line"] for r in records} & set(reasons)


@pytest.mark.parametrize("name,kwargs,message", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_unusable_files_fail_with_path_and_reason(name, kwargs, message):
    with pytest.raises(DataError) as err:
        read_records(BAD / name, [], **kwargs)
    assert str(BAD / name) in str(err.value)
    assert message in str(err.value)


def test_corpus_has_every_kind_and_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_corpus", BAD / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    made = sorted(p.name for p in tmp_path.iterdir())
    # Subfolders are the config/validation/eval-text corpus of make_config_corpus.py (test_bad_input_corpus).
    assert made == sorted(p.name for p in BAD.iterdir() if p.is_file() and p.suffix != ".py" and p.name[0] not in "._")
    tested = {c[0] for c in CASES} | {e[0] for e in ERRORS}
    assert set(made) <= tested
    for name in made:
        new, old = tmp_path / name, BAD / name
        if name == "parquet_null.parquet":
            assert pq.read_table(new).to_pylist() == pq.read_table(old).to_pylist(), name
        elif name.endswith(".gz") and not name.startswith("corrupt"):  # gzip bytes vary with the zlib build
            assert gzip.decompress(new.read_bytes()) == gzip.decompress(old.read_bytes()), name
        else:
            assert new.read_bytes() == old.read_bytes(), f"{name}: rerun tests/data/bad/make_corpus.py"


def test_rejects_name_the_field_and_keep_the_row():
    rejected: list[dict] = []
    read_records(BAD / "field_checks.jsonl", rejected)
    fields = {r["line"]: r["field"] for r in rejected}
    assert fields == {2: "output", 3: "output", 4: "instruction", 5: "output", 6: "input", 7: "output"}
    assert json.loads(rejected[0]["row"]) == {"instruction": "a", "output": None}
    assert json.loads(next(r["row"] for r in rejected if r["reason"] == "nan")) == {"instruction": "g", "output": "nan"}
    rejected = []
    read_records(BAD / "nan.csv", rejected)
    assert [(r["field"], r["reason"]) for r in rejected] == [("text", "nan"), ("category", "empty_field")]
    rejected = []
    read_records(BAD / "huge_line.jsonl.gz", rejected)
    assert len(rejected[0]["row"]) == 2000 and rejected[0]["field"] == "-"


def test_bom_and_crlf_read_clean():
    for name in ("bom.jsonl", "crlf.jsonl", "bom_crlf.csv"):
        rejected: list[dict] = []
        rows = rows_of(BAD / name, rejected)
        assert not rejected
        assert all(not k.startswith("\ufeff") for r in rows for k in r), name
        assert all(not str(v).endswith("\r") for r in rows for v in r.values()), name
    rows = rows_of(BAD / "bom_crlf.csv", [])
    assert [(r["_line"], r["text"], r["label"]) for r in rows] == [(2, "hello", "greet"), (3, "bye, then", "farewell")]


def test_line_numbers_skip_blank_lines_and_count_csv_header():
    assert [r["_line"] for r in rows_of(BAD / "blank_lines.jsonl", [])] == [1, 4]
    assert [r["_line"] for r in rows_of(BAD / "multiline.csv", [])] == [2, 4, 5]  # "two\nlines" starts on 2


KEYS = ["instruction", "input", "output", "messages", "conversations", "prompt", "completion", "chosen", "rejected",
        "text", "label", "category", "id"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["user", "assistant", "system", "\n\nHuman: hi\n\nAssistant: a", "\n\nHuman: hi\n\nAssistant: b",
                       "Human: hi\n\nAssistant:"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["role", "content", "from", "value"]),
                                                                 inner, max_size=2),
    max_leaves=8,
)
LINES = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=20),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINES, min_size=1, max_size=6), shape=st.sampled_from((None, *SHAPES)),
       labels=st.none() | st.just({"a", "b"}))
def test_random_jsonl_never_crashes_and_never_loses_a_row(lines, shape, labels):
    data = b"\n".join(lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.jsonl"
        path.write_bytes(data)
        rejected: list[dict] = []
        try:
            records = read_records(path, rejected, shape=shape or "auto", labels=labels, system_prompt=None)
        except DataError as e:
            assert str(path) in str(e)
            return
    rows = sum(1 for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n") if line.strip())
    assert len(records) + len(rejected) == rows
    for r in records + rejected:
        assert r["source"] == str(path) and 1 <= r["line"] <= data.count(b"\n") + 1
    for r in records:
        assert r["prompt"] and r["prompt"][-1]["role"] == "user"
        assert all(isinstance(m["content"], str) for m in r["prompt"])
        assert (r["chosen"] is None) == (r["shape"] not in ("preference", "hh_preference"))
        assert isinstance(r["completion"], str) and (r["label"] is None) == (r["shape"] != "classification")
    for r in rejected:
        json.dumps(r).encode("utf-8")  # rejects must be storable (no lone surrogates)
