"""How much memory training took: resident memory now, the peak of a block, the process's peak.

    with peak_rss_delta() as peak:
        trainer.train()
    peak["mb"], peak_memory_mb()
"""

from __future__ import annotations

import os
import platform
import resource
from contextlib import contextmanager
from pathlib import Path

import torch


def rss_mb() -> float:
    """Resident memory of this process now (Linux; 0.0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _release_freed_memory() -> None:
    """Hand memory freed earlier back to the OS (glibc keeps it), so the next peak is not hidden in it."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_rss_delta():
    """Peak resident memory above the level at entry, in MB, for the code inside the block (CPU):
    resets the kernel's high-water mark (VmHWM, Linux >= 4.0) at entry and reads it at exit.

        with peak_rss_delta() as peak:
            trainer.train()
        peak["mb"]
    """
    _release_freed_memory()
    result = {"mb": None, "base_mb": rss_mb()}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    try:
        yield result
    finally:
        if resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    result["mb"] = int(line.split()[1]) / 1024 - result["base_mb"]


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if platform.system() != "Darwin" else rss / 2**20
