"""Copy the raw data files a data config names into one directory: the run's `raw_data` artifact.

    python -m tuneline.data.snapshot configs/default.yaml /tmp/raw   # copies the files, prints the manifest

validate_data reads this copy rather than the project's files, so the dashboard links every run to
the exact raw bytes it was trained on (raw_data -> task_data -> sft_adapter -> ...), and an old run
can be re-validated from its own artifact after the files changed. Hub dataset ids are recorded by
name (the hub keeps their versions); errors and rejected rows name the configured file, not the copy.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from tuneline.config import DataConfig, resolve

# The data-config keys that name input files; general_mix.file is nested.
FIELDS = ("train_file", "test_file", "labels_file", "preference_file", "general_mix.file")


class RawDataDir(BaseModel):
    """The copied raw files: `files` maps each config key to {name, stored, bytes, sha256}."""

    path: str
    files: dict[str, dict] = {}
    sha256: str = ""

    def stored(self, key: str) -> str | None:
        rel = self.files.get(key, {}).get("stored")
        return str(Path(self.path) / rel) if rel else None


def _get(cfg: DataConfig, key: str) -> str | None:
    if key == "general_mix.file":
        return cfg.general_mix.file if cfg.general_mix else None
    return getattr(cfg, key)


def _sha(path: Path) -> tuple[int, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return sum(f.stat().st_size for f in files), h.hexdigest()


def _sources(cfg: DataConfig) -> list[tuple[str, str, Path]]:
    """(config key, configured name, resolved path) of every input the data config names."""
    return [(key, name, resolve(name)) for key in FIELDS if (name := _get(cfg, key))]


def _total(digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()[:16]


def fingerprint(cfg: DataConfig) -> str:
    """The hash `snapshot` will give the files, computed without copying them: the pipeline passes it
    to snapshot_data as its cache key, so changed data re-runs it and everything after it."""
    return _total([_sha(p)[1] if p.exists() else name for _key, name, p in _sources(cfg)])


def snapshot(cfg: DataConfig, out: Path) -> RawDataDir:
    """Copy every local file or directory `cfg` names into `out/<key>/<its name>`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, name, src in _sources(cfg):
        if not src.exists():  # a hub dataset id (data.validate says what to do if it is neither)
            files[key] = {"name": name, "stored": None, "bytes": 0, "sha256": None}
            continue
        rel = Path(key) / src.name
        (out / key).mkdir(exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / rel)
        size, digest = _sha(src)
        files[key] = {"name": name, "stored": str(rel), "bytes": size, "sha256": digest}
    return RawDataDir(path=str(out), files=files, sha256=_total([f["sha256"] or f["name"] for f in files.values()]))


def config_for(raw: RawDataDir, cfg: DataConfig) -> DataConfig:
    """`cfg` with each copied file's key pointing into the snapshot."""
    update = {k: raw.stored(k) for k in FIELDS if k != "general_mix.file" and raw.stored(k)}
    out = cfg.model_copy(update=update)
    if cfg.general_mix and raw.stored("general_mix.file"):
        out.general_mix = cfg.general_mix.model_copy(update={"file": raw.stored("general_mix.file")})
    return out


def original_names(raw: RawDataDir) -> dict[str, str]:
    """Snapshot path -> configured name, for turning copies back into what the user wrote."""
    return {raw.stored(k): v["name"] for k, v in raw.files.items() if v["stored"]}


def rename_text(text: str, names: dict[str, str]) -> str:
    for stored, name in names.items():
        text = text.replace(stored, name)
    return text


def rename_sources(df: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Rewrite a `source` column (rows read from a copy) to the configured file names."""
    if "source" in df.columns and len(df):
        df = df.copy()
        df["source"] = df["source"].astype(str).map(lambda s: rename_text(s, names))
    return df


def validate(raw: RawDataDir, cfg: DataConfig, tokenizer, mmlu_subjects=None):
    """data.validate on the snapshot, with every file name (rows, reports, errors) as configured."""
    import json

    from tuneline.data import validate as data

    names = original_names(raw)
    try:
        v = data.validate(config_for(raw, cfg), tokenizer, mmlu_subjects)
    except data.DataError as e:
        raise data.DataError(rename_text(str(e), names)) from None
    v.task, v.preferences, v.rejected = (rename_sources(df, names) for df in (v.task, v.preferences, v.rejected))
    v.counts, v.checks, v.balance = (json.loads(rename_text(json.dumps(d), names)) for d in (v.counts, v.checks, v.balance))
    v.gate_failures = [rename_text(m, names) for m in v.gate_failures]
    for g in v.gx:
        g["source"] = rename_text(str(g["source"]), names)
    return v


if __name__ == "__main__":
    from tuneline.config import load

    raw = snapshot(load(sys.argv[1]).data, Path(sys.argv[2]))
    for key, f in raw.files.items():
        print(f"{key:18} {f['name']:60} {f['bytes']:>10} B  {f['sha256'] or '(hub id)'}")
