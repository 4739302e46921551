"""Installed versions of the tools that made an artifact, for its metadata.

    python -c "from tuneline.versions import package_versions; print(package_versions('torch', 'gguf'))"
"""

from __future__ import annotations

import importlib.metadata


def package_versions(*names: str) -> dict[str, str | None]:
    """name -> installed version (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
