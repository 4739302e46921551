"""Print tuneline's pinned requirements from pyproject.toml, for the Dockerfiles.

    python3 docker/requirements.py pyproject.toml [--with NAME ...] [--constraints]
    python3 docker/requirements.py pyproject.toml --extra quant     # one whole extra, each entry pinned

Prints every `[project].dependencies` entry, then the entries of `[project.optional-dependencies]`
named with `--with` (e.g. `--with kubernetes`: the client ZenML's Kubernetes orchestrator
imports in every pod). `--constraints` drops extras (`zenml[local]==0.98.0` -> `zenml==0.98.0`),
the form pip accepts in a constraints file. A dependency or named package not pinned with `==`,
or pinned to two versions by two extras, is an error: an image never floats. Standard library
only (runs before anything is installed).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# name[extras]==version, optionally followed by an environment marker
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*(;.*)?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(req: str) -> tuple[str, str, str]:
    """(canonical name, extras, version) of a `name[extras]==version` requirement."""
    m = PIN.match(req)
    if not m:
        raise ValueError(f"not pinned with ==: {req!r}")
    return canonical(m.group(1)), m.group(2) or "", m.group(3)


NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def groups(pyproject: Path) -> dict[str, list[str]]:
    """{'dependencies': [...], <extra>: [...], ...} as written in pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return {"dependencies": project.get("dependencies", []), **project.get("optional-dependencies", {})}


def requirements(pyproject: Path, extra_names: list[str], constraints: bool = False) -> list[str]:
    """Every dependency (each must be pinned), then the pin of each named package from the extras."""
    found = groups(pyproject)
    out = [r.strip() for r in found["dependencies"]]
    for req in out:
        parse_pin(req)
    for name in extra_names:
        candidates = {r.strip() for group, reqs in found.items() if group != "dependencies" for r in reqs
                      if NAME.match(r) and canonical(NAME.match(r).group(1)) == canonical(name)}
        if not candidates:
            raise ValueError(f"{name} is not in any optional-dependencies group of {pyproject}")
        if len({parse_pin(c)[2] for c in candidates}) > 1:
            raise ValueError(f"{name} is pinned to different versions in {pyproject}: {sorted(candidates)}")
        out.append(sorted(candidates)[0])
    if constraints:
        out = [re.sub(r"\[[^\]]*\]", "", r, count=1) for r in out]
    return out


def extra(pyproject: Path, name: str) -> list[str]:
    """Every entry of one optional-dependencies group (each must be pinned), for a second pip resolve."""
    found = groups(pyproject)
    if name not in found or name == "dependencies":
        raise ValueError(f"no optional-dependencies group {name!r} in {pyproject}")
    out = [r.strip() for r in found[name]]
    for req in out:
        parse_pin(req)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject", type=Path)
    ap.add_argument("--with", dest="extra_names", action="append", default=[], metavar="NAME")
    ap.add_argument("--constraints", action="store_true")
    ap.add_argument("--extra", help="print this whole optional-dependencies group instead")
    args = ap.parse_args(argv)
    try:
        if args.extra:
            print("\n".join(extra(args.pyproject, args.extra)))
        else:
            print("\n".join(requirements(args.pyproject, args.extra_names, args.constraints)))
    except ValueError as err:
        print(f"docker/requirements.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
