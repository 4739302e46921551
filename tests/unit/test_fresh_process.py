"""call_in_fresh_process: a call that runs in another process gives back what it would have given here.

    .venv/bin/pytest -q tests/unit/test_fresh_process.py
"""

import json
import os

import pytest

from tuneline.config import ConfigError, load
from tuneline.fresh_process import FreshProcessError, call_in_fresh_process


def test_the_result_comes_back_from_another_process():
    assert call_in_fresh_process(os.getpid) != os.getpid()
    assert call_in_fresh_process(json.loads, '{"rows": [1, 2]}') == {"rows": [1, 2]}


def test_the_childs_output_reaches_this_process_streams(capsys):
    """Relayed through sys.stdout/sys.stderr, where ZenML's step log capture sees it."""
    call_in_fresh_process(print, "progress 3/8", end="\r")
    call_in_fresh_process(os.write, 2, "warning: ünïcode\n".encode())
    out, err = capsys.readouterr()
    assert out == "progress 3/8\r" and err == "warning: ünïcode\n"


def test_an_exception_is_raised_here_with_its_message_and_the_childs_traceback(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml") as err:
        call_in_fresh_process(load, tmp_path / "missing.yaml")
    assert any("in the fresh process" in note and "Traceback" in note for note in err.value.__notes__)


def test_a_child_killed_without_a_result_says_so():
    with pytest.raises(FreshProcessError, match=r"abort ended with signal 6 \(SIGABRT\) and no result"):
        call_in_fresh_process(os.abort)
