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
from tuneline.generate import TaskResult


class GGUFExportResult(BaseModel):
    reference: TaskResult  # the merged HF model on the same rows: the "merged" candidate
    files: list[GGUFFile]

    @property
    def reference_accuracy(self) -> float:
        return self.reference.accuracy


def merged_task_result(model_dir: str, records: list[dict], max_new_tokens: int, metric: str) -> TaskResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.generate import task_accuracy

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    return task_accuracy(model, tok, records, max_new_tokens, batch_size=32, metric=metric)


def export_gguf(model_dir: str, out_dir: Path, records: list[dict], cfg: ExportConfig,
                metric: str = "exact_match") -> GGUFExportResult:
    rows = records[: cfg.check_rows] if cfg.check_rows else records
    reference = merged_task_result(model_dir, rows, cfg.max_new_tokens, metric)
    files = export(
        model_dir, out_dir, cfg.gguf_types,
        conversations=[messages(r, with_answer=False) for r in rows],
        answers=[r["assistant"] for r in rows],
        reference_accuracy=reference.accuracy, max_accuracy_drop=cfg.max_accuracy_drop,
        max_tokens=cfg.max_new_tokens, metric=metric,
    )
    return GGUFExportResult(reference=reference, files=files)


if __name__ == "__main__":
    import sys

    from tuneline.base_model import load_tokenizer, prepare
    from tuneline.config import load
    from tuneline.data import validate

    cfg = load(sys.argv[1])
    v = validate(cfg.data, load_tokenizer(prepare(cfg.base_model)))
    res = export_gguf(sys.argv[2], Path(sys.argv[3]), v.task[v.task.split == "eval"].to_dict("records"), cfg.export,
                      cfg.evaluate.metric)
    print(f"merged: {res.reference.accuracy:.3f} on {res.reference.n} rows")
    for f in res.files:
        print(f"{f.qtype}: {f.size_bytes / 2**20:.1f} MB, {f.accuracy:.3f}, {'passed' if f.passed else 'REJECTED'} ({f.reason})")
