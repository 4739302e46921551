"""Read any supported training file and normalize its rows to one canonical record.

    python -m tuneline.data.readers data/hh_rlhf/helpful-base_test.jsonl.gz   # shape, record and reject counts
    python -m tuneline.data.readers my.csv --shape alpaca --columns question=instruction answer=output

Inputs: .jsonl, .json, .csv, .parquet (each optionally .gz), a directory of those (recursive,
sorted), or a Hugging Face dataset id. Shapes (found from the columns when unambiguous):

    alpaca             instruction, output[, input]
    messages           messages (or conversations): [{role, content}, ...] ending with the assistant
    prompt_completion  prompt (text or messages), completion
    preference         prompt, chosen, rejected
    hh_preference      chosen, rejected: whole '\\n\\nHuman: ..\\n\\nAssistant: ..' transcripts
    classification     text, label (or category)

Every row becomes a record or a reject (source, line, reason, field, detail, row): nothing is
dropped silently. A file that cannot be used at all raises DataError with the path and the fix.
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

from tuneline.config import hint

SHAPES = ("alpaca", "messages", "prompt_completion", "preference", "hh_preference", "classification")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
# One JSONL line or CSV record larger than this is almost surely junk (a pasted dump, a missing newline).
MAX_LINE_BYTES = 1_000_000
MAX_ROW_CHARS = 2000
ROLES = ("system", "user", "assistant")
# ShareGPT-style turns ({"from": "human", "value": ..}) are common under the `conversations` key.
ROLE_ALIASES = {"human": "user", "gpt": "assistant"}
# Each required field as a tuple of accepted names (aliases), in the order they are looked up.
REQUIRED = {
    "alpaca": (("instruction",), ("output",)),
    "messages": (("messages", "conversations"),),
    "prompt_completion": (("prompt",), ("completion",)),
    "preference": (("prompt",), ("chosen",), ("rejected",)),
    "hh_preference": (("chosen",), ("rejected",)),
    "classification": (("text",), ("label", "category")),
}
CANONICAL_FIELDS = {"instruction", "input", "output", "messages", "conversations", "prompt", "completion",
                    "chosen", "rejected", "text", "label", "category"}
SHAPE_HELP = "; ".join(f"{s}: {', '.join('/'.join(a) for a in req)}" for s, req in REQUIRED.items())
HH_CUE = "\n\nAssistant:"


class DataError(ValueError):
    """Input that cannot be used at all (as opposed to a bad row, which is quarantined)."""


class _Bad(Exception):
    """One row's problem; normalize turns it into a reject."""

    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


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


def _kind(path: Path) -> str | None:
    """'jsonl' / 'json' / 'csv' / 'parquet' from the name (x.jsonl.gz too), or None."""
    name = path.name.lower().removesuffix(".gz")
    return next((ext[1:] for ext in EXTENSIONS if name.endswith(ext)), None)


def _file_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from None
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({e}); re-create it with `gzip -k FILE` "
                            f"or drop the .gz suffix if it is not compressed") from None
    elif data[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: gzip-compressed but not named .gz; rename it to {path.name}.gz")
    return data.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM written by Excel / Notepad


def _empty(path: Path) -> DataError:
    return DataError(f"{path}: no rows (the file is empty or blank); point the config at a file with data")


def _jsonl_line(path: Path, no: int, raw: bytes, rejected: list) -> dict | None:
    """One JSONL line -> a row, or None after rejecting it."""
    def bad(reason, detail):
        reject(rejected, path, no, reason, "-", detail, raw)

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
    return {**obj, "_source": str(path), "_line": no}


def _read_jsonl(path: Path, data: bytes, rejected: list) -> list[dict]:
    # Split bytes on b"\n" only: str.splitlines() would also split inside strings at \u2028, \x1c, ..,
    # and decoding per line keeps one bad line from killing the file.
    rows, seen = [], 0
    for no, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        seen += 1
        row = _jsonl_line(path, no, raw, rejected)
        if row is not None:
            rows.append(row)
    if not seen:
        raise _empty(path)
    return rows


def _read_json(path: Path, data: bytes, rejected: list) -> list[dict]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}; re-save the file as UTF-8") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read; flatten it") from None
    except json.JSONDecodeError as e:
        if not data.strip():
            raise _empty(path) from None
        if e.msg == "Extra data":  # one object per line: `datasets` writes JSON Lines as .json
            return _read_jsonl(path, data, rejected)
        raise DataError(f"{path}: not valid JSON ({e}); fix it, or use .jsonl for one object per line") from None
    except ValueError as e:  # an int over Python's 4300-digit limit
        raise DataError(f"{path}: not readable as JSON ({e})") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON object with {len(lists)} list-valued keys {lists}; expected a list of "
                            f"rows, or an object with exactly one list of rows (e.g. {{\"data\": [...]}})")
        obj = obj[lists[0]]
    if not isinstance(obj, list):
        raise DataError(f"{path}: the top level is a JSON {type(obj).__name__}; expected a list of row objects")
    if not obj:
        raise _empty(path)
    rows = []
    for i, item in enumerate(obj, 1):
        if isinstance(item, dict):
            rows.append({**item, "_source": str(path), "_line": i})
        else:
            reject(rejected, path, i, "not_an_object", "-", f"a JSON {type(item).__name__}, expected an object", item)
    return rows


def _csv_row(path: Path, no: int, header: list[str], cells: list[str], rejected: list) -> dict | None:
    def bad(reason, detail):
        reject(rejected, path, no, reason, "-", detail, ",".join(cells))

    if sum(len(c) for c in cells) > MAX_LINE_BYTES:
        return bad("line_too_large", f"record longer than {MAX_LINE_BYTES} characters; an unclosed quote?")
    if any("\0" in c for c in cells):
        return bad("binary", "NUL bytes: binary data, not text")
    if any(_has_surrogate(c) for c in cells):
        return bad("invalid_utf8", "bytes that are not UTF-8; re-save the file as UTF-8")
    if len(cells) != len(header):
        return bad("bad_csv", f"{len(cells)} cells, the header has {len(header)}; an unquoted comma or quote?")
    # 'nan' / 'NaN' cells are missing values written by pandas (df.astype(str)); as text they
    # would teach the model to answer 'nan'.
    row = {k: float("nan") if v in ("nan", "NaN") else v for k, v in zip(header, cells)}
    return {**row, "_source": str(path), "_line": no}


def _read_csv(path: Path, data: bytes, rejected: list) -> list[dict]:
    # surrogateescape: a bad byte only spoils its own record (rejected below), not the whole file.
    text = data.decode("utf-8", "surrogateescape")
    if not text.strip():
        raise _empty(path)
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
                if dup or any(_has_surrogate(c) or "\0" in c for c in header):
                    raise DataError(f"{path}: the CSV header {header} has duplicate or unreadable column names; "
                                    f"fix line {start}")
                continue
            seen += 1
            row = _csv_row(path, start, header, cells, rejected)
            if row is not None:
                rows.append(row)
    except csv.Error as e:  # e.g. a field over the size limit: an unclosed quote has eaten the rest of the file
        raise DataError(f"{path}: not readable as CSV near line {reader.line_num} ({e}); check its quoting") from None
    if not seen:
        raise DataError(f"{path}: no data rows under the header {header}; point the config at a file with data")
    return rows


def _read_parquet(path: Path, data: bytes, rejected: list) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError) for a bad file
        raise DataError(f"{path}: not readable as Parquet ({e}); re-export it (pandas: df.to_parquet(path))") from None
    if not table.num_rows:
        raise _empty(path)
    return [{**r, "_source": str(path), "_line": i} for i, r in enumerate(table.to_pylist(), 1)]


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def _read_file(path: Path, rejected: list) -> list[dict]:
    kind = _kind(path)
    if kind is None:
        raise DataError(f"{path}: unsupported file type; use {', '.join(EXTENSIONS)} (optionally .gz) or convert it")
    return READERS[kind](path, _file_bytes(path), rejected)


def _read_hub(name: str) -> list[dict]:
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


def read_rows(source: str | Path, rejected: list) -> list[dict]:
    """Raw rows, each a dict with the file's fields plus "_source" (str path) and "_line" (1-based line;
    for CSV the header is line 1, for JSON arrays the element index+1, for parquet the row index+1)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{path}: a directory with no {', '.join(EXTENSIONS)} files (optionally .gz) in it")
        return [row for f in files for row in _read_file(f, rejected)]
    if path.is_file():
        return _read_file(path, rejected)
    if _kind(path) or path.is_absolute() or str(source).startswith((".", "~")):
        raise DataError(f"{path}: file not found. Check data.* paths in the config "
                        f"(relative paths start at the project root).")
    return _read_hub(str(source))


# ---------------------------------------------------------------- shapes


def _fits(shape: str, keys) -> bool:
    # hh_preference is the one shape defined by a missing column: with a prompt it is a plain preference.
    if shape == "hh_preference" and "prompt" in keys:
        return False
    return all(any(a in keys for a in alts) for alts in REQUIRED[shape])


def detect_shape(columns: set[str], source) -> str:
    """The one shape whose required columns are all present; DataError when none or several fit."""
    cols = sorted(set(columns) - {"_source", "_line"})
    found = [s for s in SHAPES if _fits(s, cols)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{source}: cannot tell the data shape from the columns {cols}. Expected ({SHAPE_HELP}). "
                        f"Set data.shape, and rename columns with data.columns (e.g. {{question: instruction}}).")
    raise DataError(f"{source}: the columns {cols} fit several shapes ({', '.join(found)}); "
                    f"set data.shape to the one you mean.")


def file_shape(rows: list[dict], source) -> str:
    """Shape of one file: decided by the first row whose keys fit any shape (a junk first row does not
    decide it); rows of another shape are rejected later as shape_mismatch."""
    for row in rows:
        if any(_fits(s, row) for s in SHAPES):
            return detect_shape(set(row), source)
    return detect_shape(set(rows[0]) if rows else set(), source)


def rename(rows: list[dict], columns: dict[str, str] | None) -> list[dict]:
    """Rows with source columns renamed to canonical ones (data.columns), e.g. {question: instruction}."""
    if not columns:
        return rows
    present = set().union(*rows) - {"_source", "_line"} if rows else set()
    where = rows[0]["_source"] if rows and "_source" in rows[0] else "the data"
    twice = [d for d, n in Counter(columns.values()).items() if n > 1]
    if twice:
        raise DataError(f"data.columns maps several columns to {twice}; keep one mapping per canonical field")
    for src, dst in columns.items():
        if src not in present:
            raise DataError(f"{where}: data.columns maps '{src}', which is not a column; "
                            f"columns found: {sorted(present)}")
        if dst not in CANONICAL_FIELDS:
            raise DataError(f"data.columns maps '{src}' to '{dst}', not a field of any shape: "
                            f"{hint(dst, CANONICAL_FIELDS)}")
        if dst in present and dst not in columns:
            raise DataError(f"{where}: data.columns maps '{src}' to '{dst}', but '{dst}' is already a column; "
                            f"map or drop one of them")
    return [{columns.get(k, k): v for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------- field checks


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _text(value, field: str, allow_empty: bool = False) -> str:
    """A required string field, stripped; raises _Bad with the reason code."""
    if value is None:
        raise _Bad("missing_field", field, f"'{field}' is missing or null")
    if isinstance(value, float) and math.isnan(value):
        raise _Bad("nan", field, f"'{field}' is NaN (a missing value in a CSV/Parquet cell)")
    if not isinstance(value, str):
        raise _Bad("wrong_type", field, f"'{field}' is a {type(value).__name__}, expected a string")
    if _has_surrogate(value):
        raise _Bad("invalid_utf8", field, f"'{field}' holds a lone surrogate (an invalid \\ud800-style escape)")
    if "\0" in value:
        raise _Bad("binary", field, f"'{field}' holds NUL characters")
    if not value.strip() and not allow_empty:
        raise _Bad("empty_field", field, f"'{field}' is empty or whitespace-only")
    # Surrounding whitespace is noise to a chat template (HH answers start with a space).
    return value.strip()


def _turns(value, field: str, ends_with: str) -> list[dict]:
    """A list of {role, content} -> checked chat turns: system only first, then user/assistant alternating."""
    if value is None:
        raise _Bad("missing_field", field, f"'{field}' is missing or null")
    if isinstance(value, float) and math.isnan(value):
        raise _Bad("nan", field, f"'{field}' is NaN (a missing value in a CSV/Parquet cell)")
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else f"a {type(value).__name__}"
        raise _Bad("bad_messages", field, f"'{field}' is {what}, expected a list of {{role, content}} turns")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _Bad("bad_messages", field, f"turn {i} is a {type(m).__name__}, expected {{role, content}}")
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if role is None or content is None:
            raise _Bad("bad_messages", field, f"turn {i} has no {'role' if role is None else 'content'}")
        if not isinstance(content, str):
            raise _Bad("bad_messages", field, f"turn {i} content is a {type(content).__name__}, expected a string")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise _Bad("unknown_role", field, f"turn {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        turns.append({"role": role, "content": _text(content, field, allow_empty=role == "system")})
    first = 1 if turns[0]["role"] == "system" else 0
    for i, t in enumerate(turns[first:], first):
        want = "user" if (i - first) % 2 == 0 else "assistant"
        if t["role"] != want:
            raise _Bad("wrong_role_order", field, f"turn {i} is {t['role']}, expected {want} "
                       "(an optional system turn first, then user and assistant alternating)")
    if turns[-1]["role"] != ends_with:
        if ends_with == "assistant":
            raise _Bad("missing_assistant_turn", field, f"the last turn is {turns[-1]['role']}; it must be the "
                       "assistant answer to learn")
        raise _Bad("wrong_role_order", field, f"a prompt must end with a user turn, not {turns[-1]['role']}")
    return turns


def _answer(value, field: str) -> str:
    """A completion / chosen / rejected: a string, or a message list whose final assistant turn is the answer."""
    if not isinstance(value, list):
        return _text(value, field)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role", m.get("from")), str):
            raise _Bad("bad_messages", field, f"turn {i} is not a {{role, content}} object")
    last = value[-1] if value else {}
    role = last.get("role", last.get("from"))
    if ROLE_ALIASES.get(role, role) != "assistant":
        raise _Bad("missing_assistant_turn", field, f"'{field}' must end with an assistant turn")
    content = last.get("content", last.get("value"))
    if content is not None and not isinstance(content, str):
        raise _Bad("bad_messages", field, f"the last turn's content is a {type(content).__name__}, expected a string")
    return _text(content, field)


def _prompt(value, field: str) -> list[dict]:
    """A prompt: a message list ending with the user, an HH transcript ('Human: ..  Assistant:'), or plain text."""
    if isinstance(value, list):
        return _turns(value, field, ends_with="user")
    text = _text(value, field)
    # HH-RLHF's prompt column is a transcript; as one user turn the model would see 'Human:' markers.
    if text.startswith("Human:") and text.endswith("Assistant:"):
        return _turns(hh_prompt_messages("\n\n" + text), field, ends_with="user")
    return [{"role": "user", "content": text}]


def hh_prompt_messages(prompt: str) -> list[dict]:
    """'\\n\\nHuman: ..\\n\\nAssistant: ..' transcript -> chat messages (the trailing empty assistant cue dropped)."""
    msgs = []
    for chunk in prompt.split("\n\n"):
        for prefix, role in (("Human:", "user"), ("Assistant:", "assistant")):
            if chunk.startswith(prefix):
                msgs.append({"role": role, "content": chunk[len(prefix):].strip()})
                break
        else:
            if msgs and chunk.strip():
                msgs[-1]["content"] += "\n\n" + chunk.strip()
    return [m for m in msgs if m["content"]] if msgs and not msgs[-1]["content"] else msgs


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Two HH transcripts -> (shared prompt up to the last 'Assistant:' cue, chosen answer, rejected answer)."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(HH_CUE, 0, n)  # the last cue wholly inside the shared prefix
    if cut < 0:
        raise _Bad("no_shared_prefix", "chosen", "chosen and rejected share no '\\n\\nHuman: ..\\n\\nAssistant:' "
                   "prefix; give them a prompt column (shape preference) instead")
    end = cut + len(HH_CUE)
    return chosen[:end], chosen[end:], rejected[end:]


# ---------------------------------------------------------------- normalize


def _pick(row: dict, alts: tuple[str, ...]) -> str:
    return next((a for a in alts if a in row), alts[0])


def _record(row: dict, shape: str, labels, template, system) -> dict:
    """One row of a known shape -> canonical record (without source/line); raises _Bad."""
    rec = {"label": None, "chosen": None, "rejected": None, "completion": ""}
    if shape == "alpaca":
        user = _text(row.get("instruction"), "instruction")
        extra = row.get("input")
        if not (extra is None or (isinstance(extra, float) and math.isnan(extra))):  # optional: empty cell is fine
            extra = _text(extra, "input", allow_empty=True)
            user = f"{user}\n\n{extra}" if extra else user
        prompt, rec["completion"] = [{"role": "user", "content": user}], _text(row.get("output"), "output")
    elif shape == "messages":
        key = _pick(row, REQUIRED["messages"][0])
        turns = _turns(row.get(key), key, ends_with="assistant")
        prompt, rec["completion"] = turns[:-1], turns[-1]["content"]
    elif shape == "prompt_completion":
        prompt, rec["completion"] = _prompt(row.get("prompt"), "prompt"), _answer(row.get("completion"), "completion")
    elif shape == "preference":
        prompt = _prompt(row.get("prompt"), "prompt")
        rec["chosen"], rec["rejected"] = _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")
    elif shape == "hh_preference":
        head, chosen, rejected = split_hh(_text(row.get("chosen"), "chosen"), _text(row.get("rejected"), "rejected"))
        prompt = _turns(hh_prompt_messages(head), "chosen", ends_with="user")
        rec["chosen"], rec["rejected"] = _text(chosen, "chosen"), _text(rejected, "rejected")
    else:  # classification
        key = _pick(row, REQUIRED["classification"][1])
        text, label = _text(row.get("text"), "text"), _text(row.get(key), key)
        if labels is not None and label not in labels:
            raise _Bad("unknown_label", key, f"label {label!r} is not one of the {len(labels)} known labels")
        prompt = [{"role": "user", "content": template.format(text=text)}]
        rec["completion"] = rec["label"] = label
    if rec["chosen"] is not None and rec["chosen"] == rec["rejected"]:
        raise _Bad("identical_pair", "chosen", "chosen == rejected: nothing to prefer")
    if system is not None and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    return {"shape": shape, "prompt": prompt, **rec}


def _check_whole_file(rows: list[dict], shape: str, columns) -> None:
    """A required column absent from every row of a file is the file's problem, not each row's."""
    by_source: dict[str, set] = {}
    for r in rows:
        by_source.setdefault(r.get("_source", "?"), set()).update(r)
    inverse = {v: k for k, v in (columns or {}).items()}
    for src, keys in by_source.items():
        missing = ["/".join(inverse.get(a, a) for a in alts)
                   for alts in REQUIRED[shape] if not any(a in keys for a in alts)]
        if missing:
            raise DataError(f"{src}: no column {', '.join(missing)} needed by shape {shape}; columns found: "
                            f"{sorted(inverse.get(k, k) for k in keys - {'_source', '_line'})}. "
                            f"Rename them with data.columns, or set data.shape ({SHAPE_HELP}).")


def normalize(rows: list[dict], shape: str, *, columns: dict[str, str] | None = None, labels: set[str] | None = None,
              template: str | None = None, system_prompt: str | None = None, rejected: list) -> list[dict]:
    """Rows of one shape -> canonical records {source, line, shape, prompt, completion, label, chosen, rejected};
    every other row goes to `rejected` with a reason code."""
    if shape not in SHAPES:
        raise DataError(f"unknown data.shape {shape!r}: {hint(str(shape), SHAPES)}")
    template = template or "{text}"
    try:
        template.format(text="")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"prompt template {template!r} must use only {{text}} "
                        f"(write literal braces as {{{{ }}}}): {e!r}") from None
    if shape == "classification" and "{text}" not in template:
        raise DataError(f"prompt template {template!r} must contain '{{text}}' where the input text goes")
    rows = rename(rows, columns)
    _check_whole_file(rows, shape, columns)
    inverse = {v: k for k, v in (columns or {}).items()}
    out = []
    for row in rows:
        src, line = row.get("_source", "?"), row.get("_line", 0)
        original = {inverse.get(k, k): v for k, v in row.items()} if inverse else row
        if not _fits(shape, row):
            others = [s for s in SHAPES if _fits(s, row)]
            if others:
                need = ", ".join("/".join(a) for a in REQUIRED[shape])
                reject(rejected, src, line, "shape_mismatch", "-",
                       f"row has the fields of {others[0]}, but this file is {shape} (needs {need})", original)
            else:
                missing = next(alts[0] for alts in REQUIRED[shape] if not any(a in row for a in alts))
                reject(rejected, src, line, "missing_field", inverse.get(missing, missing),
                       f"'{missing}' is missing", original)
            continue
        try:
            out.append({"source": src, "line": line, **_record(row, shape, labels, template, system_prompt)})
        except _Bad as bad:
            reject(rejected, src, line, bad.reason, inverse.get(bad.field, bad.field), bad.detail, original)
    return out


def read_records(source: str | Path, rejected: list, *, shape: str | None = None,
                 columns: dict[str, str] | None = None, labels: set[str] | None = None,
                 template: str | None = None, system_prompt: str | None = None) -> list[dict]:
    """read_rows + normalize, with the shape detected per file unless given; every row is a record or a reject."""
    before = len(rejected)
    rows = read_rows(source, rejected)
    if not rows:
        reasons = Counter(r["reason"] for r in rejected[before:])
        raise DataError(f"{source}: no readable rows, {sum(reasons.values())} rejected {dict(reasons)}. "
                        f"If it is one JSON array, name it .json; else see the rejects for each line.")
    by_source: dict[str, list] = {}
    for r in rows:
        by_source.setdefault(r["_source"], []).append(r)
    out = []
    for src, group in by_source.items():
        file_shp = shape or file_shape(rename(group, columns), src)
        out += normalize(group, file_shp, columns=columns, labels=labels, template=template,
                         system_prompt=system_prompt, rejected=rejected)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Read a data file and print its shape, record and reject counts.")
    ap.add_argument("source")
    ap.add_argument("--shape", choices=SHAPES)
    ap.add_argument("--columns", nargs="*", default=[], help="renames as SRC=CANONICAL, e.g. question=instruction")
    args = ap.parse_args()
    rej: list[dict] = []
    try:
        recs = read_records(args.source, rej, shape=args.shape, columns=dict(c.split("=", 1) for c in args.columns))
    except DataError as err:
        raise SystemExit(str(err)) from None
    print(json.dumps({"records": len(recs), "shapes": Counter(r["shape"] for r in recs),
                      "rejected": len(rej), "reasons": Counter(r["reason"] for r in rej)}, indent=2))
