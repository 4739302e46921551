"""Each step's cache key holds the code it runs, not only its own function.

    @step(cache_policy=code_cache(__name__))

ZenML keys a step on its function's source, its parameters and its inputs. A step here is a thin wrapper whose
work is done in `tuneline/`, so that key misses the code that makes the numbers: after a change to
tuneline/train/sft.py, a re-run would reuse the old adapter and report the old scores. The policy adds, as
`file_dependencies`, every project file the step's module imports (`tuneline.sources.module_files`), read at
key time: a change to any of them re-runs the step and, through its new outputs, what follows; a change
elsewhere (an export module, for a training step) leaves it cached.
"""

import os
from pathlib import Path

from zenml.config import CachePolicy
from zenml.utils import source_utils

from tuneline.paths import PROJECT_ROOT
from tuneline.sources import module_files


def code_cache(module: str, root: Path = PROJECT_ROOT) -> CachePolicy:
    """ZenML's default policy plus the files `module` runs, relative to the source root: a step pod, with the
    code at another absolute path, finds the same files."""
    source_root = _source_root()
    files = sorted(os.path.relpath(p, source_root) for p in module_files(module, root).values())
    return CachePolicy(file_dependencies=files)


def _source_root() -> str:
    try:
        return source_utils.get_source_root()
    except RuntimeError:  # `python -c` with no `zenml init`: only importable there, and running needs the init anyway
        return str(PROJECT_ROOT)
