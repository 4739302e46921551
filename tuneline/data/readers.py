"""Read data files into raw rows: one dict per row, with the file's own fields, "_source" and "_line".

    tuneline validate configs/default.yaml --source data/banking77/train.csv   # reaches this through read_source
    rows = read_file("train.csv", Path("data/banking77/train.csv"), rejected)

Formats: .jsonl, .json, .csv, .parquet, .txt, each optionally .gz; a Hugging Face dataset id (read_hub).
A .txt file is raw text for the `text` shape (continued pretraining): one {"text": ..} row per
blank-line-separated block, or the whole file as one row when it is one of a directory's files.
A row that cannot be read (bad JSON, bad bytes, a ragged CSV line) is a reject {source, line, reason,
field, detail, row}: nothing is dropped silently. A file that cannot be used at all raises DataError
with its name and the fix. `name` is the file as configured: every row, reject and error shows it,
whatever `path` the bytes are read from (a snapshot copy, say).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections import Counter
from pathlib import Path

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# One JSONL line or CSV record larger than this is almost surely junk (a pasted dump, a missing newline).
MAX_LINE_BYTES = 1_000_000
MAX_ROW_CHARS = 2000


class DataError(ValueError):
    """Input that cannot be used at all (as opposed to a bad row, which is quarantined)."""


# ---------------------------------------------------------------- rejects


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


def _row_text(row) -> str:
    if isinstance(row, bytes):
        text = row[: 4 * MAX_ROW_CHARS].decode("utf-8", "backslashreplace")
    elif isinstance(row, str):
        text = row
    else:
        if isinstance(row, dict):
            row = {k: v for k, v in row.items() if k not in ("_source", "_line")}
        try:
            text = json.dumps(_json_safe(row), ensure_ascii=False)
        except RecursionError:
            text = f"<a {type(row).__name__} nested too deeply to show>"
    # Lone surrogates (bad bytes, '\\ud800' escapes) would break writing the rejects to Parquet later.
    return text[:MAX_ROW_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def reject(rejected: list, source, line, reason: str, field: str, detail: str, row) -> None:
    """Quarantine one row; `row` is the original dict, or the raw line (str/bytes) when it did not parse."""
    rejected.append({"source": str(source), "line": int(line), "reason": reason, "field": field,
                     "detail": detail, "row": _row_text(row)})


# ---------------------------------------------------------------- reading


def kind(path: Path) -> str | None:
    """'jsonl' / 'json' / 'csv' / 'parquet' from the name (x.jsonl.gz too), or None."""
    name = path.name.lower().removesuffix(".gz")
    return next((ext[1:] for ext in EXTENSIONS if name.endswith(ext)), None)


def _file_bytes(name: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({e.strerror or e}); check its permissions") from None
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{name}: not a valid gzip file ({e}); re-create it with `gzip -k FILE` "
                            f"or drop the .gz suffix if it is not compressed") from None
    elif data[:2] == b"\x1f\x8b":
        raise DataError(f"{name}: gzip-compressed but not named .gz; rename it to {path.name}.gz")
    return data.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM written by Excel / Notepad


def _empty(name: str) -> DataError:
    return DataError(f"{name}: no rows (the file is empty or blank); point the config at a file with data")


def _jsonl_line(name: str, no: int, raw: bytes, rejected: list) -> dict | None:
    """One JSONL line -> a row, or None after rejecting it."""
    def bad(reason, detail):
        reject(rejected, name, no, reason, "-", detail, raw)

    if len(raw) > MAX_LINE_BYTES:
        return bad("line_too_large", f"{len(raw)} bytes > {MAX_LINE_BYTES}; a missing newline or a pasted dump?")
    if b"\0" in raw:
        return bad("binary", "NUL bytes: binary data, not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return bad("invalid_utf8", f"not UTF-8 at byte {e.start}; re-save the file as UTF-8")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError: also ints over Python's 4300-digit limit
        return bad("bad_json", f"not valid JSON: {e}")
    if not isinstance(obj, dict):
        return bad("not_an_object", f"a JSON {type(obj).__name__}, expected an object {{...}}")
    return {**obj, "_source": name, "_line": no}


def _read_jsonl(name: str, data: bytes, rejected: list) -> list[dict]:
    # Split bytes on b"\n" only: str.splitlines() would also split inside strings at \u2028, \x1c, ..,
    # and decoding per line keeps one bad line from killing the file.
    rows, seen = [], 0
    for no, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        seen += 1
        row = _jsonl_line(name, no, raw, rejected)
        if row is not None:
            rows.append(row)
    if not seen:
        raise _empty(name)
    return rows


def _read_json(name: str, data: bytes, rejected: list) -> list[dict]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 at byte {e.start}; re-save the file as UTF-8") from None
    except RecursionError:
        raise DataError(f"{name}: JSON nested too deeply to read; flatten it") from None
    except json.JSONDecodeError as e:
        if not data.strip():
            raise _empty(name) from None
        if e.msg == "Extra data":  # one object per line: `datasets` writes JSON Lines as .json
            return _read_jsonl(name, data, rejected)
        raise DataError(f"{name}: not valid JSON ({e}); fix it, or use .jsonl for one object per line") from None
    except ValueError as e:  # an int over Python's 4300-digit limit
        raise DataError(f"{name}: not readable as JSON ({e})") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{name}: a JSON object with {len(lists)} list-valued keys {lists}; expected a list of "
                            f"rows, or an object with exactly one list of rows (e.g. {{\"data\": [...]}})")
        obj = obj[lists[0]]
    if not isinstance(obj, list):
        raise DataError(f"{name}: the top level is a JSON {type(obj).__name__}; expected a list of row objects")
    if not obj:
        raise _empty(name)
    rows = []
    for i, item in enumerate(obj, 1):
        if isinstance(item, dict):
            rows.append({**item, "_source": name, "_line": i})
        else:
            reject(rejected, name, i, "not_an_object", "-", f"a JSON {type(item).__name__}, expected an object", item)
    return rows


def _csv_row(name: str, no: int, header: list[str], cells: list[str], rejected: list) -> dict | None:
    def bad(reason, detail):
        reject(rejected, name, no, reason, "-", detail, ",".join(cells))

    if sum(len(c) for c in cells) > MAX_LINE_BYTES:
        return bad("line_too_large", f"record longer than {MAX_LINE_BYTES} characters; an unclosed quote?")
    if any("\0" in c for c in cells):
        return bad("binary", "NUL bytes: binary data, not text")
    if any(has_surrogate(c) for c in cells):
        return bad("invalid_utf8", "bytes that are not UTF-8; re-save the file as UTF-8")
    if len(cells) != len(header):
        return bad("bad_csv", f"{len(cells)} cells, the header has {len(header)}; an unquoted comma or quote?")
    # 'nan' / 'NaN' cells are missing values written by pandas (df.astype(str)); as text they
    # would teach the model to answer 'nan'.
    row = {k: float("nan") if v in ("nan", "NaN") else v for k, v in zip(header, cells)}
    return {**row, "_source": name, "_line": no}


def _read_csv(name: str, data: bytes, rejected: list) -> list[dict]:
    # surrogateescape: a bad byte only spoils its own record (rejected below), not the whole file.
    text = data.decode("utf-8", "surrogateescape")
    if not text.strip():
        raise _empty(name)
    csv.field_size_limit(2 * MAX_LINE_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, header, end, seen = [], None, 0, 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span lines: report where it starts
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                dup = [c for c, n in Counter(header).items() if n > 1]
                if dup or any(has_surrogate(c) or "\0" in c for c in header):
                    raise DataError(f"{name}: the CSV header {header} has duplicate or unreadable column names; "
                                    f"fix line {start}")
                continue
            seen += 1
            row = _csv_row(name, start, header, cells, rejected)
            if row is not None:
                rows.append(row)
    except csv.Error as e:  # e.g. a field over the size limit: an unclosed quote has eaten the rest of the file
        raise DataError(f"{name}: not readable as CSV near line {reader.line_num} ({e}); check its quoting") from None
    if not seen:
        raise DataError(f"{name}: no data rows under the header {header}; point the config at a file with data")
    return rows


def _read_parquet(name: str, data: bytes, rejected: list) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{name}: reading Parquet needs pyarrow; pip install pyarrow") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError) for a bad file
        raise DataError(f"{name}: not readable as Parquet ({e}); re-export it (pandas: df.to_parquet(path))") from None
    if not table.num_rows:
        raise _empty(name)
    return [{**r, "_source": name, "_line": i} for i, r in enumerate(table.to_pylist(), 1)]



def _txt_text(name: str, data: bytes) -> str:
    """A .txt file's text with \n line ends; the whole file is refused when it is not UTF-8 or holds NULs
    (a binary file named .txt), since no document boundary inside it can be trusted."""
    if b"\0" in data:
        raise DataError(f"{name}: NUL bytes: binary data, not text; point the config at text files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 at byte {e.start}; re-save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_txt_blocks(name: str, data: bytes, rejected: list) -> list[dict]:
    """One {"text"} row per blank-line-separated block; `_line` is the block's first line."""
    rows, block, start = [], [], 0
    for no, line in enumerate(_txt_text(name, data).split("\n") + [""], 1):
        if line.strip():
            start = start or no
            block.append(line)
        elif block:
            rows.append({"text": "\n".join(block), "_source": name, "_line": start})
            block, start = [], 0
    if not rows:
        raise _empty(name)
    return rows


def _read_txt_document(name: str, data: bytes, rejected: list) -> list[dict]:
    """The whole file as one {"text"} row (a directory of .txt files: one document per file); an empty file is
    an empty document, rejected by the shape's checks like an empty cell, not a reason to refuse the directory."""
    return [{"text": _txt_text(name, data).strip(), "_source": name, "_line": 1}]


def has_surrogate(s: str) -> bool:
    """True when `s` holds a lone surrogate: bytes that were not UTF-8, or a '\\ud800'-style escape."""
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet,
           "txt": _read_txt_blocks}


def read_file(name: str, path: Path, rejected: list, in_directory: bool = False) -> list[dict]:
    """The rows of one file at `path`, named `name` in rows, rejects and errors. `in_directory`: the file is one
    of a directory source's, where a .txt file is one document (alone, it is one document per block)."""
    file_kind = kind(path)
    if file_kind is None:
        raise DataError(f"{name}: unsupported file type; use {', '.join(EXTENSIONS)} (optionally .gz) or convert it")
    reader = _read_txt_document if file_kind == "txt" and in_directory else READERS[file_kind]
    return reader(name, _file_bytes(name, path), rejected)


def read_hub(name: str) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown id, no train split, missing package: all mean "not loadable"
        raise DataError(f"{name}: no such local file or directory, and it could not be loaded as a Hugging Face "
                        f"dataset id ({type(e).__name__}: {str(e)[:200]}). Check the path (relative paths start "
                        f"at the project root), or download the dataset while online.") from None
    # ClassLabel columns hold ints; the label names are what a model should learn to answer.
    names = {k: f.names for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    return [{**r, **{k: names[k][r[k]] for k in names if isinstance(r[k], int) and 0 <= r[k] < len(names[k])},
             "_source": name, "_line": i} for i, r in enumerate(ds, 1)]
