"""Step: GGUF files via llama.cpp's converter and quantizer, each loaded back and checked by the export
gate on the task rows and on the run's general_text snapshot (perplexity), against the merged model's reference
(the score_merged step's); the file that ships is served and, with export.benchmarks, runs the evaluation's
MMLU / GSM8K."""

from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from materializers import DirectoryMaterializer
from steps._cache import code_cache
from steps._cards import about
from steps._metadata import log
from tuneline.artifacts import ExportDir, ModelDir, TrainedDir, step_output
from tuneline.cards import export_card, write_card
from tuneline.config import ExportConfig, MergeConfig
from tuneline.data.generation import carried_length
from tuneline.eval.perplexity import GeneralText
from tuneline.export.gate import ExportChecks
from tuneline.export.records import MergedReference


@step(cache_policy=code_cache(__name__), output_materializers={"gguf_export": DirectoryMaterializer})
def export_gguf(merged: ModelDir, task_data: pd.DataFrame, config: ExportConfig, checks: ExportChecks,
                reference: MergedReference, general_text: GeneralText | None = None, adapter: TrainedDir | None = None,
                merge_config: MergeConfig | None = None) -> Annotated[ExportDir, "gguf_export"]:
    from tuneline.export.gguf import export_gguf as run_export

    checks = checks.of_run(carried_length(task_data), general_text)  # as score_merged scored the reference
    rows = task_data[task_data.split == "eval"].to_dict("records")
    with step_output("gguf") as out:  # deleted once the artifact store holds it
        res = run_export(merged.path, out, rows, config, checks, reference)
        if config.lora_adapters and adapter is not None:  # base GGUF + GGUF LoRA adapters beside the files
            from tuneline.export.gguf_lora import export_for_run

            lora = export_for_run(merged.base.ensure().path, merged.path, adapter.path, merge_config, out, rows, config,
                                  checks.max_new_tokens, out / Path(res.files[0].path).name)
        write_card(out, export_card(merged.base, about(task_data), res.files, "gguf", checks.metric))
    log({
        "reference_accuracy": res.reference.score,
        "reference_perplexity": round(res.reference_perplexity.ppl, 4) if res.reference_perplexity else None,
        **{f"{f.qtype}": {"size_mb": round(f.size_bytes / 2**20, 1), "sha256": f.sha256, "score": f.score if f.asked else None,
                          "perplexity": f.perplexity, "perplexity_increase": f.perplexity_increase,
                          "passed": f.passed, "reason": f.reason, "auto": f.auto,
                          "serve": f.serve.model_dump() if f.serve else None,
                          **{k: round(b.score, 4) for k, b in f.benchmarks.items()},
                          "benchmarks": f.benchmarks_note or None} for f in res.files},
        **{f"merged_{k}": round(r.score, 4) for k, r in res.reference_benchmarks.items()},
        **({"lora_adapters": lora.model_dump(include={"base", "rows", "agreement", "base_agreement", "note"})}
           if config.lora_adapters and adapter is not None else {}),
    })
    return ExportDir(path=str(out), **dict(res.stored()))
