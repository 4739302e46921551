"""Installed versions of the tools that made an artifact or a training run, for its metadata.

    python -c "from tuneline.versions import package_versions; print(package_versions('torch', 'gguf'))"
    package_versions("python", *TRAINING_LIBRARIES)     # what a training step records
"""

from __future__ import annotations

import importlib.metadata
import platform

# The libraries whose versions decide a training run's numbers.
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets")


def package_versions(*names: str) -> dict[str, str | None]:
    """name -> installed version (None when not installed); "python" is the interpreter's version."""
    out: dict[str, str | None] = {}
    for name in names:
        if name == "python":
            out[name] = platform.python_version()
            continue
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
