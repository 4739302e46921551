"""Step: check and split the raw data snapshot; rejected rows and the validation report are kept as artifacts.

    tuneline run configs/default.yaml               # in the pipeline; `tuneline validate` runs the same check

The snapshot's copies are read under their configured names. The gate verdict is an output too;
`data_gate` stops the run on it, after these artifacts are stored, so a failed run still shows why
in the dashboard. `dpo` is what DPO takes from the data (cfg.dpo.data_use()): whether mining rows are
split off and whether the gate checks that DPO can get pairs.
"""

from typing import Annotated

import pandas as pd
from zenml import step

from steps._cache import code_cache
from steps._metadata import log
from tuneline.config import DataConfig, DPOData
from tuneline.dashboard import Report, data_report
from tuneline.data.snapshot import RawDataDir
from tuneline.model.base import BaseModelRef, load_tokenizer


@step(cache_policy=code_cache(__name__))
def validate_data(
    base: BaseModelRef, raw_data: RawDataDir, config: DataConfig, mmlu_subjects: list[str] | None = None,
    dpo: DPOData | None = None,
) -> tuple[
    Annotated[pd.DataFrame, "task_data"],
    Annotated[pd.DataFrame, "preference_data"],
    Annotated[pd.DataFrame, "rejected_rows"],
    Annotated[dict, "data_validation"],
    Annotated[Report, "data_report"],
]:
    from tuneline.data.validate import validate

    v = validate(config, load_tokenizer(base.ensure()), mmlu_subjects, copies=raw_data.copies(), dpo=dpo)
    summary = {"counts": v.counts, "checks": v.checks, "balance": v.balance, "gate_failures": v.gate_failures,
               "expectations": [{"source": g["source"], "shape": g["shape"], "success": g["result"].success,
                                 "statistics": g["result"].statistics, "result": g["result"].raw} for g in v.gx]}
    log({"raw_data_sha256": raw_data.sha256, "chat_template": base.template.reason if base.template else "auto",
         "counts": v.counts, "checks": v.checks, "gate": "failed" if v.gate_failures else "passed",
         "max_new_tokens": v.generation.model_dump() if v.generation else None,  # and why: counts.max_new_tokens_why
         "balance": {k: x for k, x in (v.balance.get("train") or {}).items() if k != "counts"}})
    return v.task, v.preferences, v.rejected, summary, data_report(v, base.template.reason if base.template else "")
