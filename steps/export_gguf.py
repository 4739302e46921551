"""Step: GGUF files via llama.cpp's converter and quantizer, each loaded back and checked by the export
gate on the task rows, on the run's general_text snapshot (perplexity) and, with export.benchmarks, on the
evaluation's MMLU / GSM8K (the merged model too)."""

from typing import Annotated

import pandas as pd
from zenml import step

from materializers import DirectoryMaterializer
from steps._cards import about
from steps._metadata import log
from tuneline.artifacts import ExportDir, ModelDir, step_output
from tuneline.cards import export_card, write_card
from tuneline.config import ExportConfig
from tuneline.data.generation import carried_length
from tuneline.eval.perplexity import GeneralText
from tuneline.export.gate import ExportChecks
from tuneline.export.gguf import export_gguf as run_export


@step(output_materializers={"gguf_export": DirectoryMaterializer})
def export_gguf(merged: ModelDir, task_data: pd.DataFrame, config: ExportConfig,
                checks: ExportChecks, general_text: GeneralText | None = None) -> Annotated[ExportDir, "gguf_export"]:
    # The run's snapshot of the general texts (the file is not read again): an edited file re-runs this step.
    checks = general_text.pin(checks) if general_text else checks
    rows = task_data[task_data.split == "eval"].to_dict("records")
    with step_output("gguf") as out:  # deleted once the artifact store holds it
        res = run_export(merged.path, out, rows, config, checks.with_length(carried_length(task_data)))
        write_card(out, export_card(merged.base, about(task_data), res.files, "gguf", checks.metric))
    log({
        "reference_accuracy": res.reference.score,
        "reference_perplexity": round(res.reference_perplexity.ppl, 4) if res.reference_perplexity else None,
        **{f"{f.qtype}": {"size_mb": round(f.size_bytes / 2**20, 1), "sha256": f.sha256, "score": f.score,
                          "perplexity": f.perplexity, "perplexity_increase": f.perplexity_increase,
                          "passed": f.passed, "reason": f.reason, "auto": f.auto,
                          "serve": f.serve.model_dump() if f.serve else None,
                          **{k: round(b.score, 4) for k, b in f.benchmarks.items()}} for f in res.files},
        **{f"merged_{k}": round(r.score, 4) for k, r in res.reference_benchmarks.items()},
    })
    return ExportDir(path=str(out), **dict(res.stored()))
