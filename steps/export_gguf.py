"""Step: GGUF files via llama.cpp's converter and quantizer, each loaded back and checked on the task
rows and, with export.benchmarks, on the evaluation's MMLU / GSM8K (the merged model too)."""

import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from materializers import DirectoryMaterializer
from steps._metadata import log
from tuneline.artifacts import ExportDir, ModelDir
from tuneline.config import EvaluateConfig, ExportConfig
from tuneline.export.gate import export_gguf as run_export


@step(output_materializers={"gguf_export": DirectoryMaterializer})
def export_gguf(merged: ModelDir, task_data: pd.DataFrame, config: ExportConfig,
                evaluate: EvaluateConfig) -> Annotated[ExportDir, "gguf_export"]:
    out = Path(tempfile.mkdtemp(prefix="gguf-"))
    rows = task_data[task_data.split == "eval"].to_dict("records")
    res = run_export(merged.path, out, rows, config, evaluate.metric, evaluate)
    log({
        "reference_accuracy": res.reference_accuracy,
        "reference_perplexity": round(res.reference_perplexity.ppl, 4) if res.reference_perplexity else None,
        **{f"{f.qtype}": {"size_mb": round(f.size_bytes / 2**20, 1), "sha256": f.sha256, "score": f.score,
                          "perplexity": f.perplexity, "perplexity_increase": f.perplexity_increase,
                          "passed": f.passed, "reason": f.reason, "auto": f.auto,
                          **{k: round(b["score"], 4) for k, b in f.benchmarks.items()}} for f in res.files},
        **{f"merged_{k}": round(r.score, 4) for k, r in res.reference_benchmarks.items()},
    })
    files = [f.model_dump(exclude={"samples"}) | {"path": Path(f.path).name, "format": "gguf",
                                                  "predictions": [s.predicted for s in f.samples]} for f in res.files]
    return ExportDir(path=str(out), format="gguf", files=files, reference=res.reference.model_dump(),
                     reference_benchmarks={k: r.model_dump() for k, r in res.reference_benchmarks.items()},
                     reference_perplexity=res.reference_perplexity.model_dump() if res.reference_perplexity else {})
