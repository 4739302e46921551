"""Typed handles for the directories steps hand each other (adapters, merged models, exports).

    ModelDir(path="/tmp/merged", base=ref, adapters=["sft", "dpo"])   # what the merge step returns

They hold a path and the lineage a later step needs; materializers/ stores the directory
itself in the artifact store, so a handle loaded in another step points at a real copy.
"""

from __future__ import annotations

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
