"""Run-keyed training checkpoints: where they live, which one a re-run resumes from, and their mirror.

    ckpt = checkpoint_dir("sft", sft.checkpoint_key(ref, cfg, records))  # run_key(base, code_version, config, data)
    trainer.train(resume_from_checkpoint=resume_point(ckpt, mirror))

TUNELINE_CHECKPOINTS moves the root, TUNELINE_SAVE_STEPS the interval (tests patch the module attributes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Protocol

from transformers import TrainerCallback

from tuneline.model.base import sha256_file
from tuneline.paths import PROJECT_ROOT
from tuneline.sources import code_key
from tuneline.versions import TRAINING_LIBRARIES, package_versions

CHECKPOINT_ROOT = Path(os.environ.get("TUNELINE_CHECKPOINTS", "~/.cache/tuneline/checkpoints")).expanduser()
# Optimizer steps between checkpoints (only the newest is kept). The kill-and-resume test sets it low.
SAVE_STEPS = int(os.environ.get("TUNELINE_SAVE_STEPS", "50"))
# What a checkpoint holds to resume exactly (single process), besides its weights; the Trainer writes
# trainer_state.json last, but skips a missing optimizer, scheduler or RNG file without a word.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")
# The weights: an adapter (PEFT methods) or the full model, one file or shards listed in an index.
WEIGHTS_FILES = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin")
WEIGHTS_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def run_key(*parts: str) -> str:
    """Checkpoints live under a key of everything that determines the result, so a re-run resumes."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def data_hash(records: list[dict]) -> str:
    """A key of rows (order included): the same rows give the same hash on any machine."""
    return run_key(*(json.dumps(r, sort_keys=True, default=str) for r in records))


def dir_hash(path: str | Path) -> str:
    """A key of every file under `path` (names and full contents): a parent adapter or model dir."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return run_key(*(f"{p.relative_to(root).as_posix()} {sha256_file(p)}" for p in files))


@functools.cache
def code_version(module: str) -> str:
    """A key of the code that trains: the source of `module` and of every project module it imports
    (`tuneline.sources.code_key`), plus the versions of the training libraries. A change to either can
    change the numbers, or leave a checkpoint the new code would resume from inexactly."""
    versions = json.dumps(package_versions(*TRAINING_LIBRARIES), sort_keys=True)
    return run_key(versions, code_key(module, PROJECT_ROOT))


def checkpoint_dir(kind: str, key: str) -> Path:
    return CHECKPOINT_ROOT / f"{kind}-{key}"


def checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint a re-run can resume from exactly: trainer_state.json parses and names this step, and
    the optimizer, scheduler, RNG and weights files are all there and whole. A SIGKILL during a save, or a
    copy cut short, leaves a newer, partial dir beside the last whole one."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        step = int(ckpt.name.split("-")[1])
    except (OSError, ValueError, IndexError):
        return False
    return (
        isinstance(state, dict)
        and state.get("global_step") == step
        and all(_whole(ckpt / f) for f in CHECKPOINT_FILES[1:])
        and _weights_whole(ckpt)
    )


def _whole(path: Path) -> bool:
    """The file is there and not cut short: a torch file (a zip) ends with its central directory; a
    safetensors file is as long as its header says."""
    try:
        if path.suffix == ".safetensors":
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            return path.stat().st_size >= 8 + size + end
        return path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _weights_whole(ckpt: Path) -> bool:
    if any(_whole(ckpt / f) for f in WEIGHTS_FILES):
        return True
    for index in WEIGHTS_INDEXES:
        try:
            shards = set(json.loads((ckpt / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        return bool(shards) and all(_whole(ckpt / s) for s in shards)
    return False


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint under a run's dir (None: start from scratch)."""
    ckpts = [p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit()] if out.exists() else []
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if checkpoint_complete(ckpt):
            return str(ckpt)
    return None


def copy_whole(src: Path, dst: Path) -> Path:
    """Copy a checkpoint dir to `dst` through a hidden temp dir beside it, renamed into place once complete:
    a kill mid-copy leaves `dst` as it was (absent or the previous copy), never half a checkpoint."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if dst.exists():
            dst.rename(old)  # the same step again: swapped out only now that its replacement is whole
        tmp.rename(dst)
    except BaseException:
        if old.exists() and not dst.exists():
            old.rename(dst)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dst


class CheckpointMirror(Protocol):
    """Somewhere durable that each checkpoint is copied to as it is written (steps/_checkpoints.py: the
    ZenML artifact store), so a re-run on a machine without the local dir (a new pod) resumes too."""

    def save(self, name: str, ckpt: Path, step: int) -> None: ...

    def restore(self, name: str, into: Path) -> Path | None: ...


class DirMirror:
    """A mirror in a plain directory (tests, and single machines with a shared disk)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(self, name: str, ckpt: Path, step: int) -> None:
        kept = copy_whole(ckpt, self.root / name / ckpt.name)
        for other in (self.root / name).iterdir():  # only the newest is kept, as locally, once it is whole
            if other != kept:
                shutil.rmtree(other, ignore_errors=True)

    def restore(self, name: str, into: Path) -> Path | None:
        found = last_checkpoint(self.root / name)
        if not found:
            return None
        return copy_whole(Path(found), into / Path(found).name)


class MirrorCheckpoints(TrainerCallback):
    """Hands every checkpoint to the mirror right after the Trainer wrote it (trainer_state.json included)."""

    def __init__(self, mirror: CheckpointMirror, name: str) -> None:
        self.mirror, self.name = mirror, name

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.mirror.save(self.name, Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)


def mirror_callbacks(ckpt: Path, mirror: CheckpointMirror | None) -> list[TrainerCallback]:
    return [MirrorCheckpoints(mirror, ckpt.name)] if mirror else []


def resume_point(ckpt: Path, mirror: CheckpointMirror | None = None) -> str | None:
    """The checkpoint to resume from: the local one, else the mirror's newest copied back (a new machine)."""
    if last_checkpoint(ckpt) is None and mirror is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        mirror.restore(ckpt.name, ckpt)
    return last_checkpoint(ckpt)
