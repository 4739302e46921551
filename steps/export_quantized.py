"""Steps: GPTQ and AWQ 4-bit exports of the merged model (GPTQModel, calibrated on training rows), each
loaded back by transformers and judged against the merged model like every GGUF file. One step per
format, so each has its own container settings and a failed quantization fails only its own step."""

import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from materializers import DirectoryMaterializer
from steps._metadata import log
from tuneline.artifacts import ExportDir, ModelDir
from tuneline.config import EvaluateConfig, ExportConfig, QuantizeConfig
from tuneline.export.gate import export_quantized


def _export(method: str, merged: ModelDir, task_data: pd.DataFrame, quantize: QuantizeConfig,
            config: ExportConfig, evaluate: EvaluateConfig) -> ExportDir:
    out = Path(tempfile.mkdtemp(prefix=f"{method}-")) / "model"
    train = task_data[task_data.split == "train"].to_dict("records")
    rows = task_data[task_data.split == "eval"].to_dict("records")
    res = export_quantized(merged.path, out, method, train, rows, quantize, config, evaluate.metric, evaluate)
    f = res.file
    log({"method": method, "qtype": f.qtype, "size_mb": round(f.size_bytes / 2**20, 1), "sha256": f.sha256,
         "score": f.score, "reference_accuracy": res.reference.score, "perplexity": f.perplexity,
         "perplexity_increase": f.perplexity_increase, "passed": f.passed, "reason": f.reason,
         "seconds": f.seconds, "versions": res.export["versions"],
         "calibration_samples": res.export["calibration_samples"],
         **{k: round(b["score"], 4) for k, b in f.benchmarks.items()}})
    file = f.model_dump(exclude={"samples"}) | {"path": out.name, "format": method,
                                                "predictions": [s.predicted for s in f.samples]}
    return ExportDir(path=str(out), format=method, files=[file], reference=res.reference.model_dump(),
                     reference_perplexity=res.reference_perplexity.model_dump() if res.reference_perplexity else {})


@step(output_materializers={"gptq_export": DirectoryMaterializer})
def export_gptq(merged: ModelDir, task_data: pd.DataFrame, quantize: QuantizeConfig, config: ExportConfig,
                evaluate: EvaluateConfig) -> Annotated[ExportDir, "gptq_export"]:
    return _export("gptq", merged, task_data, quantize, config, evaluate)


@step(output_materializers={"awq_export": DirectoryMaterializer})
def export_awq(merged: ModelDir, task_data: pd.DataFrame, quantize: QuantizeConfig, config: ExportConfig,
               evaluate: EvaluateConfig) -> Annotated[ExportDir, "awq_export"]:
    return _export("awq", merged, task_data, quantize, config, evaluate)
