"""Steps: GPTQ and AWQ 4-bit exports of the merged model (GPTQModel, calibrated on training rows), each
loaded back by transformers and judged like every GGUF file against the merged model's reference (the
score_merged step's). One step per format, so each has its own container settings and a failed quantization
fails only its own step."""

from typing import Annotated

import pandas as pd
from zenml import step

from materializers import DirectoryMaterializer
from steps._cache import code_cache
from steps._cards import about
from steps._metadata import log
from tuneline.artifacts import ExportDir, ModelDir, step_output
from tuneline.cards import export_card, write_card
from tuneline.config import ExportConfig, QuantizeConfig
from tuneline.data.generation import carried_length
from tuneline.disk_space import MARGIN, dir_bytes, need_free
from tuneline.eval.perplexity import GeneralText
from tuneline.export.gate import ExportChecks
from tuneline.export.records import MergedReference


def _export(method: str, merged: ModelDir, task_data: pd.DataFrame, config: QuantizeConfig, export: ExportConfig,
            checks: ExportChecks, reference: MergedReference, general_text: GeneralText | None) -> ExportDir:
    from tuneline.export.quantize import export_quantized

    train = task_data[task_data.split == "train"].to_dict("records")
    rows = task_data[task_data.split == "eval"].to_dict("records")
    checks = checks.of_run(carried_length(task_data), general_text)  # as score_merged scored the reference
    with step_output(method) as tmp:  # deleted once the artifact store holds it
        out = tmp / "model"  # export_quantized renames its finished dir to `out`: it must not exist yet
        # 4-bit weights plus the embeddings and head left in 16 bits: at most half the merged model.
        need_free({tmp: dir_bytes(merged.path) // 2 + MARGIN}, f"{method.upper()} export")
        res, q = export_quantized(merged.path, out, method, train, rows, config, export, checks, reference)
        write_card(out, export_card(merged.base, about(task_data), res.files, method, checks.metric))
    f = res.files[0]
    log({"method": method, "qtype": f.qtype, "size_mb": round(f.size_bytes / 2**20, 1), "sha256": f.sha256,
         "score": f.score, "reference_accuracy": res.reference.score, "perplexity": f.perplexity,
         "perplexity_increase": f.perplexity_increase, "passed": f.passed, "reason": f.reason,
         "seconds": f.seconds, "versions": q.versions, "calibration_samples": q.calibration_samples,
         "benchmarks": f.benchmarks_note or None})
    return ExportDir(path=str(out), **dict(res.stored()))


@step(cache_policy=code_cache(__name__), output_materializers={"gptq_export": DirectoryMaterializer})
def export_gptq(merged: ModelDir, task_data: pd.DataFrame, config: QuantizeConfig, export: ExportConfig,
                checks: ExportChecks, reference: MergedReference,
                general_text: GeneralText | None = None) -> Annotated[ExportDir, "gptq_export"]:
    return _export("gptq", merged, task_data, config, export, checks, reference, general_text)


@step(cache_policy=code_cache(__name__), output_materializers={"awq_export": DirectoryMaterializer})
def export_awq(merged: ModelDir, task_data: pd.DataFrame, config: QuantizeConfig, export: ExportConfig,
               checks: ExportChecks, reference: MergedReference,
               general_text: GeneralText | None = None) -> Annotated[ExportDir, "awq_export"]:
    return _export("awq", merged, task_data, config, export, checks, reference, general_text)
