"""The raw data snapshot: validating the copy gives what validating the files gives, named as configured.

    .venv/bin/pytest -q tests/unit/data/test_snapshot.py
"""

import pytest

from materializers.directories import RawDataMaterializer
from tuneline.config import resolve
from tuneline.data.readers import DataError
from tuneline.data.snapshot import RawDataDir, fingerprint, snapshot
from tuneline.data.validate import validate


def test_snapshot_validates_like_the_files_and_keeps_their_names(tiny_cfg, tiny_tok, tiny_data, tmp_path):
    raw = snapshot(tiny_cfg.data, tmp_path / "raw")
    assert set(raw.files) == {"train_file", "test_file", "labels_file", "preference.file"}
    assert all(f["bytes"] > 0 and len(f["sha256"]) == 64 for f in raw.files.values())
    assert raw.sha256 == fingerprint(tiny_cfg.data)  # the pipeline's cache key is the snapshot's hash
    v = validate(tiny_cfg.data, tiny_tok, copies=raw.copies())
    assert v.task.equals(tiny_data.task) and v.rejected.equals(tiny_data.rejected)  # copies read as configured
    assert v.counts == tiny_data.counts
    # Sources read "data/banking77/train.csv" (as configured), never the snapshot's copy.
    assert not v.task["source"].str.contains(str(tmp_path)).any()
    assert set(v.task["source"].map(lambda s: s.split("/")[-1])) == {"train.csv", "test.csv"}


def test_snapshot_is_independent_of_later_edits(tiny_cfg, tiny_tok, tmp_path):
    src = tmp_path / "train.csv"
    src.write_bytes(resolve(tiny_cfg.data.train_file).read_bytes())
    cfg = tiny_cfg.data.model_copy(update={"train_file": str(src)})
    raw = snapshot(cfg, tmp_path / "raw")
    before = validate(cfg, tiny_tok, copies=raw.copies()).task
    src.write_text("text,category\n")  # the user overwrites the file after the run
    assert validate(cfg, tiny_tok, copies=raw.copies()).task.equals(before)


def test_errors_name_the_configured_file(tiny_cfg, tiny_tok, tmp_path):
    bad = tmp_path / "broken.csv"
    bad.write_text("question,answer_text\nhi,there\n")
    cfg = tiny_cfg.data.model_copy(update={"train_file": str(bad), "shape": "auto"})
    raw = snapshot(cfg, tmp_path / "raw")
    with pytest.raises(DataError) as e:
        validate(cfg, tiny_tok, copies=raw.copies())
    assert str(bad) in str(e.value) and str(tmp_path / "raw") not in str(e.value), str(e.value)


def test_materializer_round_trip(tiny_cfg, tmp_path):
    raw = snapshot(tiny_cfg.data, tmp_path / "raw")
    (tmp_path / "store").mkdir()
    RawDataMaterializer(uri=str(tmp_path / "store")).save(raw)
    loaded = RawDataMaterializer(uri=str(tmp_path / "store")).load(RawDataDir)
    assert loaded.path != raw.path and loaded.files == raw.files and loaded.sha256 == raw.sha256
    assert open(loaded.stored("train_file"), "rb").read() == open(raw.stored("train_file"), "rb").read()


def test_each_tasks_files_are_copied_and_in_the_cache_key(tmp_path):
    from tuneline.config import DataConfig, TaskSpec

    train = tmp_path / "qa.jsonl"
    train.write_text('{"instruction": "q", "output": "a"}\n')
    tasks = [TaskSpec(name="intent", train_file="data/banking77/train.csv", labels_file="data/banking77/categories.json"),
             TaskSpec(name="qa", train_file=str(train), shape="alpaca", metric="token_f1")]
    cfg = DataConfig(tasks=tasks)
    raw = snapshot(cfg, tmp_path / "raw")
    # The tasks' own files, under the keys validate_tasks looks them up by; not the unused top-level defaults.
    assert set(raw.files) == {"tasks.intent.train_file", "tasks.intent.labels_file", "tasks.qa.train_file"}
    before = fingerprint(cfg)
    train.write_text('{"instruction": "q", "output": "another answer"}\n')
    assert fingerprint(cfg) != before, "an edited task file must re-run the snapshot and what follows it"
