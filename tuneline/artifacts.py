"""Typed handles for the directories steps hand each other (adapters, merged models, exports).

They hold a path and the lineage a later step needs; materializers/ stores the directory
itself in the artifact store, so a handle loaded in another step points at a real copy.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tuneline.model.base import BaseModelRef


class AdapterDir(BaseModel):
    """A PEFT adapter directory (a few MB), never a copy of the base model."""

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


class ExportDir(BaseModel):
    """Exported files of one format (e.g. GGUF), with a per-file record of checks."""

    path: str
    format: str
    files: list[dict] = []  # one per file: qtype, size, sha256, per-row scores and predictions, verdict
    reference: dict = {}  # the merged model's TaskResult on the same rows (what each file is judged against)
    reference_benchmarks: dict = {}  # the merged model's MMLU / GSM8K (benchmark -> BenchmarkResult fields)
    reference_perplexity: dict = {}  # the merged model's general-text PerplexityResult fields


class CheckpointDir(BaseModel):
    """One training checkpoint (adapter or weights, optimizer, scheduler, RNG, trainer state)."""

    path: str
    step: int
    name: str  # the run key dir it resumes, e.g. sft-<key>
