"""tuneline.allocator: training, in the process tuneline starts for it, allocates through jemalloc where installed.

    .venv/bin/pytest -q tests/unit/test_allocator.py
"""

from pathlib import Path

import pytest

from tuneline import allocator
from tuneline.allocator import jemalloc_path, with_jemalloc
from tuneline.fresh_process import call_in_fresh_process

MAPS = Path("/proc/self/maps")
pytestmark = pytest.mark.skipif(not MAPS.exists(), reason="Linux only: LD_PRELOAD and /proc/self/maps")


def test_jemalloc_is_added_once_and_what_was_preloaded_stays(monkeypatch):
    lib = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    monkeypatch.setattr(allocator, "jemalloc_path", lambda: lib)
    assert with_jemalloc({"PATH": "/bin"}) == {"PATH": "/bin", "LD_PRELOAD": lib}
    assert with_jemalloc({"LD_PRELOAD": "libasan.so.8"})["LD_PRELOAD"] == f"libasan.so.8:{lib}"
    assert with_jemalloc({"LD_PRELOAD": "libjemalloc.so.2"})["LD_PRELOAD"] == "libjemalloc.so.2"
    monkeypatch.setattr(allocator, "jemalloc_path", lambda: None)
    assert with_jemalloc({"PATH": "/bin"}) == {"PATH": "/bin"}


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("TUNELINE_JEMALLOC", "0")
    assert jemalloc_path() is None


def test_the_training_process_allocates_through_jemalloc_where_it_is_installed(monkeypatch):
    """make setup installs it (scripts/install_jemalloc.sh) where it runs as root, so CI runs this with it."""
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert ("libjemalloc" in call_in_fresh_process(Path.read_text, MAPS)) == (jemalloc_path() is not None)
    monkeypatch.setenv("TUNELINE_JEMALLOC", "0")
    assert "libjemalloc" not in call_in_fresh_process(Path.read_text, MAPS)
