"""Step: stop the run before training when the data validation gate failed.

    tuneline run configs/default.yaml               # in the pipeline, after validate_data

Cached like any step: the verdict is a pure function of the validation summary it reads.
"""

from zenml import step

from steps._cache import code_cache
from tuneline.data.readers import DataError


@step(cache_policy=code_cache(__name__))
def data_gate(data_validation: dict) -> None:
    failures = data_validation["gate_failures"]
    if failures:
        raise DataError(
            "data validation gate failed, so nothing was trained:\n  - " + "\n  - ".join(failures)
            + "\nThe full report is the data_report artifact of this run's validate_data step (dashboard, or "
            "`zenml artifact version list --name data_report`); quarantined rows are in rejected_rows."
        )
