"""Step: the merged model's reference, scored once per run and handed to export_gguf, export_gptq and export_awq,
which judge every file against it: the task rows (export.check_rows of the eval split), the run's general_text
snapshot (perplexity, and the token ids every file is scored on) and, with export.benchmarks, MMLU / GSM8K.

Its inputs are exactly what the reference depends on (the merged weights, the task data, the checks, check_rows,
the general texts), so it stays cached when only the exports' own knobs change (types, limits), and as an artifact
input to the exports, a new reference re-runs them."""

from typing import Annotated

import pandas as pd
from zenml import step

from steps._cache import code_cache
from steps._metadata import log
from tuneline.artifacts import ModelDir
from tuneline.data.generation import carried_length
from tuneline.eval.perplexity import GeneralText
from tuneline.export.gate import ExportChecks, checked_rows, merged_reference
from tuneline.export.records import MergedReference


@step(cache_policy=code_cache(__name__))
def score_merged(merged: ModelDir, task_data: pd.DataFrame, checks: ExportChecks, check_rows: int | None = None,
                 general_text: GeneralText | None = None) -> Annotated[MergedReference, "merged_reference"]:
    checks = checks.of_run(carried_length(task_data), general_text)
    rows = checked_rows(task_data[task_data.split == "eval"].to_dict("records"), check_rows)
    ref = merged_reference(merged.path, rows, checks)
    log({"task_score": round(ref.task.score, 4), "rows": ref.task.n, "task_seconds": round(ref.task.seconds, 1),
         "perplexity": round(ref.perplexity.ppl, 4) if ref.perplexity else None,
         "perplexity_seconds": round(ref.perplexity.seconds, 1) if ref.perplexity else None,
         **{k: round(b.score, 4) for k, b in ref.benchmarks.items()},
         **{f"{k}_seconds": round(b.seconds, 1) for k, b in ref.benchmarks.items()}, "key": ref.key})
    return ref
