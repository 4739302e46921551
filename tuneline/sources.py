"""The project's source files a module runs: its own file and every project module it imports, followed
through the sources, so a new helper module counts without being listed anywhere.

    python -c "from tuneline.sources import module_files; print(*module_files('steps.train_sft').values(), sep='\\n')"

The files are read, never imported: a step's list is made while the pipeline is defined, where no model library
may load. Two keys use it: a training checkpoint's (`tuneline.train.checkpoints.code_version`) and each ZenML
step's cache key (`code_key`, through `steps/_cache.py`), so that a change to the code a step runs re-runs it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from tuneline.paths import PROJECT_ROOT

# The project's own top-level packages: imports of anything else (torch, zenml) are not followed.
PACKAGES = ("tuneline", "steps", "materializers")


def module_files(module: str, root: Path = PROJECT_ROOT) -> dict[str, Path]:
    """dotted name -> file, for `module` and the project modules it imports, transitively (imports inside
    functions included). `root` holds the packages; a name that is not a file there (a class imported from a
    module, an uninstalled package) is skipped."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = None if name in seen else _module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        todo += [n for n in _imports(path.read_text()) if n.split(".")[0] in PACKAGES]
    return seen


def code_key(module: str, root: Path = PROJECT_ROOT) -> str:
    """A hash of the names and sources of `module_files(module, root)`."""
    digest = hashlib.sha256()
    for name, path in sorted(module_files(module, root).items()):
        digest.update(f"{name}\n{path.read_text()}\x00".encode())
    return digest.hexdigest()


@functools.cache  # keyed by the text: the 17 steps share most of their files, each parsed once
def _imports(source: str) -> tuple[str, ...]:
    """Every name an import statement in `source` could be a module of: `from a.b import c` gives a.b and a.b.c."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return tuple(names)


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)
