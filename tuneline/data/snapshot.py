"""Copy the raw data files a data config names into one directory: the run's `raw_data` artifact.

    tuneline run configs/default.yaml               # the snapshot_data step; validate_data reads the copy
    raw = snapshot(cfg.data, Path("/tmp/raw")); validate(cfg.data, tokenizer, copies=raw.copies())

validate_data reads this copy rather than the project's files, so the dashboard links every run to
the exact raw bytes it was trained on (raw_data -> task_data -> sft_adapter -> ...), and an old run
can be re-validated from its own artifact after the files changed. Hub dataset ids are recorded by
name (the hub keeps their versions). The copy is read under the configured name (a Source), so
errors and rejected rows name the configured file, not the copy.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pydantic import BaseModel

from tuneline.config import DataConfig
from tuneline.data.sources import locate

# The data-config keys that name input files; general_mix.file and preference.file are nested.
FIELDS = ("train_file", "test_file", "labels_file", "preference.file", "general_mix.file")


class RawDataDir(BaseModel):
    """The copied raw files: `files` maps each config key to {name, stored, bytes, sha256}."""

    path: str
    files: dict[str, dict] = {}
    sha256: str = ""

    def stored(self, key: str) -> str | None:
        rel = self.files.get(key, {}).get("stored")
        return str(Path(self.path) / rel) if rel else None

    def copies(self) -> dict[str, str]:
        """Config key -> the copy to read for it (validate's `copies`); hub ids have none."""
        return {key: self.stored(key) for key, f in self.files.items() if f["stored"]}


def _get(cfg: DataConfig, key: str) -> str | None:
    section, _, name = key.rpartition(".")
    parent = getattr(cfg, section) if section else cfg
    return getattr(parent, name) if parent else None


def _data_files(root: Path) -> list[Path]:
    """The files of a data dir the snapshot takes: hidden files (a .env) and symlinks leading out of the dir
    stay behind."""
    inside = root.resolve()
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts)
                  and inside in p.resolve().parents)


def _sha(path: Path) -> tuple[int, str]:
    files = _data_files(path) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return sum(f.stat().st_size for f in files), h.hexdigest()


def _local(cfg: DataConfig) -> list[tuple[str, str, Path | None]]:
    """(config key, configured name, local path or None for a hub dataset id) of every input `cfg` names,
    each of data.tasks' files under `tasks.<name>.<field>` (where validate_tasks looks for the copies)."""
    # With data.tasks the top-level train/test/labels files are unused defaults: the tasks name their own.
    fields = FIELDS[3:] if cfg.tasks else FIELDS
    named = [(key, name) for key in fields if (name := _get(cfg, key))]
    for task in cfg.tasks or []:
        named += [(f"tasks.{task.name}.{field}", name) for field in ("train_file", "test_file", "labels_file")
                  if (name := getattr(task, field))]
    return [(key, name, locate(name).path) for key, name in named]


def _total(digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()[:16]


def fingerprint(cfg: DataConfig) -> str:
    """The hash `snapshot` will give the files, computed without copying them: the pipeline passes it
    to snapshot_data as its cache key, so changed data re-runs it and everything after it."""
    return _total([_sha(p)[1] if p and p.exists() else name for _key, name, p in _local(cfg)])


def snapshot(cfg: DataConfig, out: Path) -> RawDataDir:
    """Copy every local file or directory `cfg` names into `out/<key>/<its name>`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, name, src in _local(cfg):
        if not (src and src.exists()):  # a hub dataset id, or a missing file that validate will name
            files[key] = {"name": name, "stored": None, "bytes": 0, "sha256": None}
            continue
        rel = Path(key) / src.name
        (out / key).mkdir(exist_ok=True)
        for f in _data_files(src) if src.is_dir() else [src]:
            dest = out / rel / f.relative_to(src) if src.is_dir() else out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        size, digest = _sha(src)
        files[key] = {"name": name, "stored": str(rel), "bytes": size, "sha256": digest}
    return RawDataDir(path=str(out), files=files, sha256=_total([f["sha256"] or f["name"] for f in files.values()]))
