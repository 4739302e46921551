"""Export the merged model to GGUF and check every file against the merged model itself.

    python -m tuneline.exports configs/default.yaml /tmp/merged /tmp/gguf

The reference is the merged HF model's accuracy on the same held-out rows, so a quantized
file is judged by what quantization lost, not by how good the model was to begin with.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tuneline.config import ExportConfig
from tuneline.data import messages
from tuneline.export_gguf import GGUFFile, export


class GGUFExportResult(BaseModel):
    reference_accuracy: float
    files: list[GGUFFile]


def merged_accuracy(model_dir: str, records: list[dict], max_new_tokens: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.generate import task_accuracy

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    return task_accuracy(model, tok, records, max_new_tokens, batch_size=32).accuracy


def export_gguf(model_dir: str, out_dir: Path, records: list[dict], cfg: ExportConfig) -> GGUFExportResult:
    rows = records[: cfg.check_rows]
    reference = merged_accuracy(model_dir, rows, cfg.max_new_tokens)
    files = export(
        model_dir, out_dir, cfg.gguf_types,
        conversations=[messages(r, with_answer=False) for r in rows],
        answers=[r["assistant"] for r in rows],
        reference_accuracy=reference, max_accuracy_drop=cfg.max_accuracy_drop, max_tokens=cfg.max_new_tokens,
    )
    return GGUFExportResult(reference_accuracy=reference, files=files)
