"""Sources: the hub-id rule, directories, configured names, and the one reading path of the CLI, tests and pipeline.

    .venv/bin/pytest -q tests/unit/data/test_sources.py
"""

import json
import random
from pathlib import Path

import pytest

from tuneline.config import DataConfig
from tuneline.data.readers import DataError
from tuneline.data.sources import Source, is_hub_id, locate, read_rows, read_source
from tuneline.data.validate import validate
from tuneline.paths import PROJECT_ROOT

BAD = PROJECT_ROOT / "tests" / "data" / "bad"
WORDS = ("apple river stone cloud bread music paper green quick silver orange window garden yellow pencil "
         "market candle forest planet rocket violin turtle basket winter summer").split()


def _alpaca(path: Path, n: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": " ".join(random.Random(seed + i).sample(WORDS, 8)), "output": f"answer {seed + i}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hub_id_rule():
    assert is_hub_id("PolyAI/banking77") and is_hub_id("tatsu-lab/alpaca")
    assert not is_hub_id("data/banking77")  # exists locally
    assert not is_hub_id("data/train.csv")  # a file suffix: a missing file, not a dataset
    assert not is_hub_id("a/b/c") and not is_hub_id("./a/b") and not is_hub_id("train")
    assert locate("PolyAI/banking77") == Source("PolyAI/banking77", None)
    assert locate("data/banking77/train.csv") == Source("data/banking77/train.csv",
                                                        PROJECT_ROOT / "data" / "banking77" / "train.csv")
    assert locate("data/x.csv", "/raw/train_file/x.csv") == Source("data/x.csv", Path("/raw/train_file/x.csv"))


def test_unknown_hub_id_fails_as_data_error():
    with pytest.raises(DataError, match="no-such-owner/no-such-set: no such local file.*Hugging Face dataset id"):
        read_rows(locate("no-such-owner/no-such-set"), [])


def test_rows_carry_the_configured_name_not_the_path_read(tmp_path):
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes((BAD / "bad_json.jsonl").read_bytes())
    rejected: list[dict] = []
    read = read_source(Source("data/mine.jsonl", copy), rejected)
    assert {r["source"] for r in read.records + rejected} == {"data/mine.jsonl"}
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="^data/broken.jsonl.gz: not a valid gzip file"):
        read_source(Source("data/broken.jsonl.gz", broken), [])


def test_directory_reads_supported_files_recursively_in_order(tmp_path):
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / ".cache").mkdir()
    (d / "b.jsonl").write_bytes((BAD / "bom.jsonl").read_bytes())
    (d / "sub" / "a.jsonl").write_bytes((BAD / "bad_json.jsonl").read_bytes())
    (d / ".cache" / "c.jsonl").write_text("junk\n")
    (d / "README.md").write_text("not data\n")
    rejected: list[dict] = []
    read = read_source(Source("data/mine", d), rejected)
    assert read.shape == "alpaca" and read.rows_in == 5
    assert [r["source"] for r in read.records] == ["data/mine/b.jsonl"] * 2 + ["data/mine/sub/a.jsonl"] * 2
    assert [(r["source"], r["line"], r["reason"]) for r in rejected] == [("data/mine/sub/a.jsonl", 2, "bad_json")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: a directory with no"):
        read_rows(locate(str(tmp_path / "empty")), [])


def test_a_directory_is_one_source_with_one_shape_for_the_cli_and_the_pipeline(tmp_path, tiny_tok):
    """`tuneline validate --source DIR` and validate_data both call read_source: a directory gets one shape,
    so a file of another shape in it is named in the error, whichever way it is read."""
    _alpaca(tmp_path / "b.jsonl", 6, 0)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_bytes((BAD / "unknown_label.csv").read_bytes())
    message = r"sub/a.csv: no column instruction, output needed by shape alpaca"
    with pytest.raises(DataError, match=message):
        read_source(locate(str(tmp_path)), [])
    cfg = DataConfig(train_file=str(tmp_path), test_file=None, labels_file=None, eval_rows=2, mining_rows=0,
                     checks={"contamination_benchmarks": []})
    with pytest.raises(DataError, match=message):
        validate(cfg, tiny_tok)


def test_validate_reads_a_directory_as_read_source_does(tmp_path, tiny_tok):
    d = tmp_path / "dir"
    _alpaca(d / "one.jsonl", 5, 0)
    _alpaca(d / "sub" / "two.jsonl", 5, 100)
    with open(d / "sub" / "two.jsonl", "a") as f:
        f.write('{"instruction": "broken", "output": \n')
    rejected: list[dict] = []
    read = read_source(locate(str(d)), rejected)
    cfg = DataConfig(train_file=str(d), test_file=None, labels_file=None, eval_rows=2, mining_rows=0,
                     checks={"near_duplicate": "report", "contamination_benchmarks": []})
    v = validate(cfg, tiny_tok)
    assert (v.counts["input_rows"], v.counts["shape"]) == (read.rows_in, read.shape) == (11, "alpaca")
    bad = v.rejected[v.rejected.reason == "bad_json"]
    assert list(zip(bad.source, bad.line)) == [(r["source"], r["line"]) for r in rejected]
    assert [(r["source"], r["line"]) for r in rejected] == [(str(d / "sub" / "two.jsonl"), 6)]
    assert set(v.task.source) == {str(d / "one.jsonl"), str(d / "sub" / "two.jsonl")}
