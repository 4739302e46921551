"""Where a configured data input is read from, and the one function that reads it into records.

    tuneline validate configs/default.yaml --source data/banking77/train.csv   # one source's counts
    read = read_source(locate("data/banking77/train.csv"), rejected)          # records, shape, rows_in

A configured name is a local file or directory (relative to the project root) or a Hugging Face
dataset id ('owner/name'); `is_hub_id` is the one rule that tells them apart. A `Source` pairs the
name as configured with the path the bytes are read from, so a snapshot copy is read under the
configured name: rows, rejects and errors show what the user wrote.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tuneline.config import resolve
from tuneline.data.readers import EXTENSIONS, DataError, kind, read_file, read_hub
from tuneline.data.shapes import file_shape, normalize, rename, strip_template

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    """A configured input: `name` as the config writes it, `path` where it is read (None: a hub dataset id)."""

    name: str
    path: Path | None = None


@dataclass
class SourceRead:
    """One source's canonical records, its shape, and its input row count (read-time rejects included)."""

    records: list[dict]
    shape: str
    rows_in: int


def is_hub_id(name: str) -> bool:
    """'owner/name' with no file suffix, and no such local path: a Hugging Face dataset id."""
    return not resolve(name).exists() and bool(_HUB_ID.match(name)) and not Path(name).suffix


def locate(name: str, copy: str | Path | None = None) -> Source:
    """The source `name` names, read from `copy` when one is given (a snapshot of it)."""
    if copy:
        return Source(name, Path(copy))
    return Source(name, None if is_hub_id(name) else resolve(name))


def read_rows(source: Source, rejected: list) -> list[dict]:
    """Raw rows, each a dict with the file's fields plus "_source" (the file as configured; for a directory,
    the configured name joined with the file's path inside it) and "_line" (1-based line; for CSV the header
    is line 1, for JSON arrays the element index+1, for parquet the row index+1)."""
    if source.path is None:
        return read_hub(source.name)
    path = source.path
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and kind(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{source.name}: a directory with no {', '.join(EXTENSIONS)} files (optionally .gz) in it")
        return [row for f in files  # in_directory: a .txt file in a directory is one document
                for row in read_file(str(Path(source.name) / f.relative_to(path)), f, rejected, in_directory=True)]
    if path.is_file():
        return read_file(source.name, path, rejected)
    raise DataError(f"{path}: file not found. Check data.* paths in the config "
                    f"(relative paths start at the project root).")


def read_source(source: Source, rejected: list, *, shape: str = "auto", columns: dict[str, str] | None = None,
                labels: set[str] | None = None, template: str | None = None,
                system_prompt: str | None = None, key: str = "data") -> SourceRead:
    """Read one source into canonical records; every row is a record or a reject in `rejected`.

    `key` is the config section that sets the source's shape and columns (data, data.preference,
    data.general_mix): errors name its keys.
    The shape is detected once per source (a directory is one source): the first row that fits a shape
    decides it, and rows of another shape are rejected as shape_mismatch. Each record keeps its original
    row as `raw`; a classification record also keeps its input text without the template as `key`.
    """
    before = len(rejected)
    rows = read_rows(source, rejected)
    read_rejects = len(rejected) - before
    if not rows:
        reasons = Counter(r["reason"] for r in rejected[before:])
        raise DataError(f"{source.name}: no readable rows, {read_rejects} rejected {dict(reasons)}. "
                        f"If it is one JSON array, name it .json; else see the rejects for each line.")
    shape = file_shape(rename(rows, columns, key), source.name, key) if shape == "auto" else shape
    template = template or "{text}"
    records = normalize(rows, shape, columns=columns or None, labels=labels, template=template,
                        system_prompt=system_prompt, rejected=rejected, key=key)
    originals = {(r["_source"], r["_line"]): r for r in rows}
    for rec in records:
        rec["raw"] = {k: v for k, v in originals[(rec["source"], rec["line"])].items() if not k.startswith("_")}
        if shape == "classification":
            rec["key"] = strip_template(rec["prompt"][-1]["content"], template)
    return SourceRead(records, shape, len(rows) + read_rejects)


def same_source(a: str, b: str) -> bool:
    """Whether two configured names are one input (the same file or directory, or the same hub id)."""
    pa, pb = locate(a).path, locate(b).path
    if pa is None or pb is None:
        return pa is None and pb is None and a == b
    return pa.resolve() == pb.resolve()


def read_labels(source: Source) -> list[str]:
    """The label names of a labels file: a non-empty JSON list of strings."""
    path = source.path or resolve(source.name)
    try:
        labels = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; set data.labels_file (null for non-classification data)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{source.name}: not valid JSON ({e}); expected a JSON list of label strings") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"{source.name}: expected a non-empty JSON list of label strings")
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise DataError(f"{source.name}: labels listed more than once: {', '.join(repeated[:5])}; list each label once")
    return labels
