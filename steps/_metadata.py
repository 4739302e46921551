"""ZenML metadata accepts no None values: drop them (recursively) before logging."""

from typing import Any

from zenml import log_metadata


def compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value if v is not None]
    return value


def log(metadata: dict, **kwargs: Any) -> None:
    log_metadata(compact(metadata), **kwargs)
