"""Free-space checks: an error that says how much is needed and where, before anything is written."""

import shutil

import pytest

from tuneline import cli
from tuneline.disk_space import MARGIN, DiskSpaceError, dir_bytes, need_free, training_bytes


def test_a_need_beyond_the_free_space_names_the_amount_and_the_place(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(DiskSpaceError, match=r"SFT \(full\) needs about [\d.]+ GB free at .*not-yet") as err:
        need_free({tmp_path / "not-yet" / "ckpt": free + 2**40}, "SFT (full)")
    assert str(tmp_path) in err.value.filename


def test_paths_on_one_filesystem_add_up(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    need_free({tmp_path / "a": 1, tmp_path / "b": 1}, "x")
    with pytest.raises(DiskSpaceError):
        need_free({tmp_path / "a": free // 2 + 2**30, tmp_path / "b": free // 2 + 2**30}, "x")


def test_training_estimate_from_the_model_size():
    ckpt, out = training_bytes(trainable=1_000_000, total=100_000_000, full_weight=False)
    assert ckpt == 24_000_000 + MARGIN and out == 4_000_000 + MARGIN  # 2 checkpoints x (fp32 + Adam m, v)
    assert training_bytes(100, 100, True)[1] == 400 + MARGIN


def test_dir_bytes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"x" * 1000)
    assert dir_bytes(tmp_path) == dir_bytes(tmp_path / "d" / "w.bin") == 1000


def test_the_cli_reports_it_without_a_traceback(monkeypatch, capsys):
    def full(a):
        raise DiskSpaceError(28, "merge needs about 2.00 GB free at /x, and there are 0.10 GB", "/x")

    args = cli.parse(["config", "check", "configs/tiny.yaml"])
    args.func = full
    monkeypatch.setattr(cli, "parse", lambda argv=None: args)
    assert cli.main([]) == 1
    assert "merge needs about 2.00 GB free at /x" in capsys.readouterr().err


def test_merge_and_gguf_export_check_before_writing(tmp_path, monkeypatch, tiny_ref):
    """Both refuse at once when the disk holding their output is (reported) full: nothing is written."""
    from collections import namedtuple

    from tuneline.export import gguf, merge

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("tuneline.disk_space.shutil.disk_usage", lambda p: usage(10**12, 10**12, 1000))
    with pytest.raises(DiskSpaceError, match="merge needs about"):
        merge.merge(tiny_ref, str(tmp_path / "no-adapter"), tmp_path / "merged")
    with pytest.raises(DiskSpaceError, match="GGUF export needs about"):
        gguf.export_files(tiny_ref.path, tmp_path / "gguf", ["f16", "Q8_0"], probe=None, gate=None)
    assert not (tmp_path / "merged").exists() and not any((tmp_path / "gguf").iterdir())
