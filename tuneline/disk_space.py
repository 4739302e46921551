"""Free-space checks before a step writes models: fail at once, saying how much is needed and where, rather
than with ENOSPC half-way through a checkpoint.

    need_free({ckpt_dir: training_bytes(trainable, total, full_weight)}, "SFT")   # tuneline/train/sft.py
    need_free({out_dir: 2 * dir_bytes(base_dir)}, "merge")                       # before writing a merged model

Estimates are from the model's size: a checkpoint holds the trainable weights and Adam's two moments
(12 bytes a parameter, fp32), and two exist at once while the newer one is written (save_total_limit 1).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

MARGIN = 64 * 2**20  # tokenizer, trainer state, logs


class DiskSpaceError(OSError):
    """Not enough free space where a step is about to write; the message says how much and where."""


def dir_bytes(path: str | Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def training_bytes(trainable: int, total: int, full_weight: bool) -> tuple[int, int]:
    """(checkpoint dir, output dir) bytes of a run: two checkpoints of weights + Adam state, one saved result."""
    checkpoints = 2 * trainable * 12
    result = (total if full_weight else trainable) * 4
    return checkpoints + MARGIN, result + MARGIN


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def need_free(needs: dict[Path, int], what: str) -> None:
    """Raise DiskSpaceError unless each filesystem has the bytes `needs` puts on it (paths on one device add up)."""
    by_device: dict[int, tuple[list[Path], int]] = {}
    for path, n in needs.items():
        dev = os.stat(_existing(Path(path))).st_dev
        paths, total = by_device.get(dev, ([], 0))
        by_device[dev] = ([*paths, Path(path)], total + n)
    for paths, n in by_device.values():
        free = shutil.disk_usage(_existing(paths[0])).free
        if free < n:
            where = " and ".join(map(str, paths))
            raise DiskSpaceError(errno.ENOSPC, f"{what} needs about {_gb(n)} free at {where}, and there are "
                                 f"{_gb(free)}: free space there, or move it (TUNELINE_CHECKPOINTS for checkpoints, "
                                 "TMPDIR for step outputs)", where)
