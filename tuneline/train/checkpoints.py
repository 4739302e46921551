"""Run-keyed training checkpoints: where they live, which one a re-run resumes from, and their mirror.

    ckpt = checkpoint_dir("sft", run_key(ref.sha256, cfg.model_dump_json(), data_hash))
    trainer.train(resume_from_checkpoint=resume_point(ckpt, mirror))

TUNELINE_CHECKPOINTS moves the root, TUNELINE_SAVE_STEPS the interval (tests patch the module attributes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Protocol

from transformers import TrainerCallback

CHECKPOINT_ROOT = Path(os.environ.get("TUNELINE_CHECKPOINTS", "~/.cache/tuneline/checkpoints")).expanduser()
# Optimizer steps between checkpoints (only the newest is kept). The kill-and-resume test sets it low.
SAVE_STEPS = int(os.environ.get("TUNELINE_SAVE_STEPS", "50"))
# What a checkpoint holds to resume exactly (single process); the Trainer writes trainer_state.json last.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def run_key(*parts: str) -> str:
    """Checkpoints live under a key of everything that determines the result, so a re-run resumes."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def checkpoint_dir(kind: str, key: str) -> Path:
    return CHECKPOINT_ROOT / f"{kind}-{key}"


def checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint a killed run left whole: its trainer_state.json, which the Trainer writes after the
    weights, optimizer, scheduler and RNG states, is there, parses, and names this step. A SIGKILL
    during a save leaves a newer, partial dir beside the last whole one."""
    try:
        return json.loads((ckpt / "trainer_state.json").read_text()).get("global_step") == int(ckpt.name.split("-")[1])
    except (OSError, ValueError):
        return False


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint under a run's dir (None: start from scratch)."""
    ckpts = [p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit()] if out.exists() else []
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if checkpoint_complete(ckpt):
            return str(ckpt)
    return None


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
        dst = self.root / name
        shutil.rmtree(dst, ignore_errors=True)  # only the newest is kept, as locally
        shutil.copytree(ckpt, dst / ckpt.name)

    def restore(self, name: str, into: Path) -> Path | None:
        found = last_checkpoint(self.root / name)
        if not found:
            return None
        shutil.copytree(found, into / Path(found).name, dirs_exist_ok=True)
        return into / Path(found).name


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
