"""jemalloc for the training process: under glibc's malloc, CPU training slows down step by step.

    env = with_jemalloc(os.environ)    # tuneline.fresh_process starts training with it
    TUNELINE_JEMALLOC=0 make run       # training under glibc's malloc, as before

Padding-free SFT batches change length every step, so every step allocates tensors of new sizes. Under glibc's
malloc the default SFT (SmolLM2-135M, 2 threads) went from 0.98 to 1.24 s a step over its first 130 steps, user CPU
rising with it, and 1.40-1.50 s a step after 100 steps in the pipeline. Under jemalloc the same batches ran 0.80-0.84
s a step from first to last (`bench/allocator.py`). Evaluation is the other way round: jemalloc gives the pages of
its large freed blocks back to the system and faults them in again, so a perplexity pass took 14.0-14.6 s under it
and 11.3-12.3 s under glibc (3 M page faults against none); without that decay its heap grew step by step in
training instead. So only training, which runs in a process of its own
(`tuneline.fresh_process`), allocates through jemalloc; the pipeline's own process keeps glibc's malloc.

jemalloc is a system library (Debian/Ubuntu `libjemalloc2`, Fedora `jemalloc`), which `make setup` installs where
it runs as root (scripts/install_jemalloc.sh). Without it everything works, training slower.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

LIBRARY = "libjemalloc.so.2"
OFF = "TUNELINE_JEMALLOC"  # "0": keep glibc's malloc


def jemalloc_path() -> str | None:
    """The jemalloc shared library of this system, or None (not installed, not Linux, or TUNELINE_JEMALLOC=0)."""
    if os.environ.get(OFF, "1") == "0" or not sys.platform.startswith("linux"):
        return None
    arch = platform.machine()
    dirs = [f"/usr/lib/{arch}-linux-gnu", f"/lib/{arch}-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            f"{sys.prefix}/lib", os.environ.get("CONDA_PREFIX", "") + "/lib"]
    return next((str(p) for d in dirs if (p := Path(d) / LIBRARY).is_file()), None)


def with_jemalloc(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a new process that allocates through jemalloc where it is installed (LD_PRELOAD, kept as it was
    besides: an allocator is chosen when a process starts)."""
    out = dict(env)
    current = env.get("LD_PRELOAD", "")
    lib = jemalloc_path()
    if lib is not None and LIBRARY not in current:
        out["LD_PRELOAD"] = f"{current}:{lib}" if current else lib
    return out
