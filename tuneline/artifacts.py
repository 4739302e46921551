"""Typed handles for the directories steps hand each other (adapters, merged models, exports).

    ModelDir(path="/tmp/merged", base=ref, adapters=["sft", "dpo"])   # what the merge step returns

They hold a path and the lineage a later step needs; materializers/ stores the directory
itself in the artifact store, so a handle loaded in another step points at a real copy.

A step writes its output dir into `step_output(name)`: a temp dir this process made, which is deleted when
the step fails, and by the materializer once the artifact store holds its copy (`discard`), so merged models,
GGUF files and adapters do not pile up in TMPDIR. A handle may also point at a user's own dir or at a live
checkpoint: only dirs made by `step_output` are ever deleted.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from tuneline.export.records import ExportResult
from tuneline.model.base import BaseModelRef


class TrainedDir(BaseModel):
    """What a training step made: a PEFT adapter dir (a few MB), or for the full-weight methods (full,
    bitfit, galore) a whole model dir; `method` says which (tuneline.train.methods.method_for)."""

    path: str
    base: BaseModelRef
    kind: str  # "sft" or "dpo"
    method: str  # "lora", "qlora", ...
    parent: str | None = None  # for DPO: the SFT adapter it started from (artifact path at train time)
    metrics: dict = {}

    def files(self) -> list[Path]:
        return sorted(p for p in Path(self.path).rglob("*") if p.is_file())


class ModelDir(BaseModel):
    """A full Hugging Face model dir (weights, tokenizer, chat template, generation config, card)."""

    path: str
    base: BaseModelRef
    adapters: list[str] = []


class ExportDir(ExportResult):
    """The exported files of one format, each with its checks and verdict (ExportFile.path is relative
    to `path`), and the merged model's results they were judged against."""

    path: str


class CheckpointDir(BaseModel):
    """One training checkpoint (adapter or weights, optimizer, scheduler, RNG, trainer state)."""

    path: str
    step: int
    name: str  # the run key dir it resumes, e.g. sft-<key>


# Step output dirs this process made (step_output), and dirs to delete when it exits (delete_at_exit).
_SCRATCH: set[Path] = set()
_AT_EXIT: set[Path] = set()


@contextmanager
def step_output(name: str) -> Iterator[Path]:
    """A fresh temp dir for a step's output: deleted if the step fails, and by the materializer once it is stored."""
    out = Path(tempfile.mkdtemp(prefix=f"tuneline-{name}-")).resolve()
    _SCRATCH.add(out)
    try:
        yield out
    except BaseException:
        discard(out)
        raise


def scratch_root(path: str | Path) -> Path | None:
    """The step_output dir holding `path` (itself or a parent); None for any other path."""
    p = Path(path).resolve()
    return next((root for root in _SCRATCH if root == p or root in p.parents), None)


def discard(path: str | Path, at_exit: bool = False) -> bool:
    """Delete the step_output dir holding `path`, now or when this process exits; False (nothing deleted) for
    a path that is not in one."""
    root = scratch_root(path)
    if root is None:
        return False
    _SCRATCH.discard(root)
    if at_exit:
        delete_at_exit(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return True


def delete_at_exit(path: str | Path) -> None:
    _AT_EXIT.add(Path(path))


@atexit.register
def _delete_at_exit() -> None:
    for path in _AT_EXIT | _SCRATCH:  # unstored step outputs too: nothing can store them after the process
        shutil.rmtree(path, ignore_errors=True)
    _AT_EXIT.clear()
    _SCRATCH.clear()
