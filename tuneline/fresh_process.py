"""Run one function call in a fresh Python process, as if it ran here: its output, its result, its exception.

    result = call_in_fresh_process(train, ref, records, cfg, out_dir)   # tuneline.train.sft.train's TrainResult

The local orchestrator runs every step of a pipeline in one process, and training leaves that process slower for
everything after it. After the default SFT (308 steps) glibc's heap there is fragmented: an allocation takes ~9x
longer (aten::empty_strided 2.6 -> 23 us a call) and the base model's 200 task rows take 15.0-15.3 s instead of
12.1-12.4 s (user CPU +29 %), for the rest of the run. gc.collect/gc.freeze, malloc_trim and mallopt thresholds did
not undo it; a process that never trained does not have it. With SFT in a fresh process the same rows took 12.3 s.
Starting the process costs ~8 s (Python, torch and transformers imports, the model load), once per training step.

The child gets the parent's environment and import path, and allocates through jemalloc where the system has it
(tuneline/allocator.py: under glibc's malloc training also slows down step by step, 1.5x over the default SFT). Its
stdout and stderr are relayed to the parent's sys.stdout/sys.stderr as they come (progress bars included), so
whatever captures the parent's output (ZenML's step logs) has the child's too. Arguments, result and exception
travel pickled, so `fn` must be importable by name. The child is sent SIGTERM if the parent dies (Linux), so a killed
run leaves no orphan training.
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tuneline.allocator import with_jemalloc

T = TypeVar("T")


class FreshProcessError(RuntimeError):
    """The child process ended without a result: killed (out of memory?) or crashed in native code."""


def call_in_fresh_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) in a new Python process; its return value, or the exception it raised."""
    with tempfile.TemporaryDirectory(prefix="tuneline-call-") as tmp:
        call, answer = Path(tmp) / "call.pkl", Path(tmp) / "answer.pkl"
        call.write_bytes(pickle.dumps((fn.__module__, fn.__qualname__, args, kwargs)))
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        env = with_jemalloc({**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
        child = subprocess.Popen([sys.executable, "-m", "tuneline.fresh_process", str(call), str(answer)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        relays = [threading.Thread(target=_relay, args=(child.stdout, sys.stdout), daemon=True),
                  threading.Thread(target=_relay, args=(child.stderr, sys.stderr), daemon=True)]
        for relay in relays:
            relay.start()
        try:
            code = child.wait()
        except BaseException:  # KeyboardInterrupt or the step's own timeout: the child must not outlive the call
            child.terminate()
            child.wait()
            raise
        finally:
            for relay in relays:
                relay.join()
        if not answer.exists():
            how = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"
            raise FreshProcessError(
                f"{fn.__module__}.{fn.__qualname__} ended with {how} and no result, in the process tuneline started "
                "for it (out of memory is the usual cause of SIGKILL: see `dmesg`). Training resumes from its last "
                "checkpoint when the step runs again.")
        ok, value = pickle.loads(answer.read_bytes())
    if ok:
        return value
    raise value


def _relay(source, sink) -> None:
    """Copy the child's bytes to `sink` as they arrive (a progress bar's \\r updates too), decoded as UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(source.fileno(), 65536):
        sink.write(decoder.decode(chunk))
        sink.flush()
    source.close()


def _child(call: Path, answer: Path) -> None:
    _die_with_parent()
    module, qualname, args, kwargs = pickle.loads(call.read_bytes())
    fn: Any = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    try:
        result = (True, fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - every error goes back to the caller, which decides
        exc.add_note("in the fresh process, " + "".join(traceback.format_exception(exc)).rstrip())
        result = (False, exc)
    try:
        data = pickle.dumps(result)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception still says what happened
        lost = RuntimeError(f"{module}.{qualname}: {result[1]!r} (could not be sent back: {exc})")
        data = pickle.dumps((False, lost))
    answer.write_bytes(data)


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
