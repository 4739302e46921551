"""The seven data shapes: detect a source's shape from its columns and turn its rows into canonical records.

    tuneline validate configs/default.yaml          # every source goes through detect -> rename -> normalize
    records = normalize(rows, file_shape(rows, "train.csv"), rejected=rejected)

    alpaca             instruction, output[, input]
    messages           messages (or conversations): [{role, content}, ...] ending with the assistant
    prompt_completion  prompt (text or messages), completion
    preference         prompt, chosen, rejected
    hh_preference      chosen, rejected: whole '\\n\\nHuman: ..\\n\\nAssistant: ..' transcripts
    classification     text, label (or category)
    text               text: raw documents for continued pretraining (also .txt files: tuneline.data.readers);
                       never detected: set data.shape: text (a lone text column may be classification
                       data that lost its label column, and raw text changes the whole run: metric, DPO)

A canonical record is {source, line, shape, prompt (chat turns), completion, label, chosen, rejected};
a text record has no prompt turns and the document as its completion (trained with loss on every token).
a row that does not make one becomes a reject with a reason code and the field to fix.
"""

from __future__ import annotations

import math
from collections import Counter

from tuneline.config import hint
from tuneline.data.readers import DataError, has_surrogate, reject

SHAPES = ("alpaca", "messages", "prompt_completion", "preference", "hh_preference", "classification", "text")

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
    "text": (("text",),),
}
CANONICAL_FIELDS = {"instruction", "input", "output", "messages", "conversations", "prompt", "completion",
                    "chosen", "rejected", "text", "label", "category"}
SHAPE_HELP = "; ".join(f"{s}: {', '.join('/'.join(a) for a in req)}" for s, req in REQUIRED.items())
HH_CUE = "\n\nAssistant:"


class _Bad(Exception):
    """One row's problem; normalize turns it into a reject."""

    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


# ---------------------------------------------------------------- detection


def _fits(shape: str, keys) -> bool:
    # hh_preference is the one shape defined by a missing column: with a prompt it is a plain preference.
    if shape == "hh_preference" and "prompt" in keys:
        return False
    return all(any(a in keys for a in alts) for alts in REQUIRED[shape])


def detect_shape(columns: set[str], source, key: str = "data") -> str:
    """The one shape whose required columns are all present; DataError when none or several fit.

    `key` is the config section the source is set in (data, data.preference, data.general_mix): errors name
    its `shape` and `columns` keys."""
    cols = sorted(set(columns) - {"_source", "_line"})
    found = [s for s in SHAPES if s != "text" and _fits(s, cols)]  # text is only ever set (SHAPES above)
    if len(found) == 1:
        return found[0]
    if not found:
        text = (f" A text column alone: raw documents for continued pretraining ({key}.shape: text), or "
                "classification data without its label column?" if _fits("text", cols) else "")
        raise DataError(f"{source}: cannot tell the data shape from the columns {cols}. Expected ({SHAPE_HELP}). "
                        f"Set {key}.shape, and rename columns with {key}.columns (e.g. {{question: instruction}})."
                        + text)
    raise DataError(f"{source}: the columns {cols} fit several shapes ({', '.join(found)}); "
                    f"set {key}.shape to the one you mean.")


def file_shape(rows: list[dict], source, key: str = "data") -> str:
    """Shape of one file: decided by the first row whose keys fit any shape (a junk first row does not
    decide it); rows of another shape are rejected later as shape_mismatch."""
    for row in rows:
        if any(_fits(s, row) for s in SHAPES):
            return detect_shape(set(row), source, key)
    return detect_shape(set(rows[0]) if rows else set(), source, key)


def rename(rows: list[dict], columns: dict[str, str] | None, key: str = "data") -> list[dict]:
    """Rows with source columns renamed to canonical ones (`key`.columns), e.g. {question: instruction}."""
    if not columns:
        return rows
    present = set().union(*rows) - {"_source", "_line"} if rows else set()
    where = rows[0]["_source"] if rows and "_source" in rows[0] else "the data"
    twice = [d for d, n in Counter(columns.values()).items() if n > 1]
    if twice:
        raise DataError(f"{key}.columns maps several columns to {twice}; keep one mapping per canonical field")
    for src, dst in columns.items():
        if src not in present:
            raise DataError(f"{where}: {key}.columns maps '{src}', which is not a column; "
                            f"columns found: {sorted(present)}")
        if dst not in CANONICAL_FIELDS:
            raise DataError(f"{key}.columns maps '{src}' to '{dst}', not a field of any shape: "
                            f"{hint(dst, CANONICAL_FIELDS)}")
        if dst in present and dst not in columns:
            raise DataError(f"{where}: {key}.columns maps '{src}' to '{dst}', but '{dst}' is already a column; "
                            f"map or drop one of them")
    return [{columns.get(k, k): v for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------- the prompt template


def check_template(template: str, *, need_text: bool = True) -> str:
    """`template` when it formats with {text} alone (and holds it, unless `need_text` is False); else DataError."""
    try:
        template.format(text="")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"data.prompt_template {template!r} must use only {{text}} "
                        f"(write literal braces as {{{{ }}}}): {e!r}") from None
    if need_text and "{text}" not in template:
        raise DataError(f"data.prompt_template {template!r} must contain '{{text}}' where the input text goes")
    return template


def strip_template(text: str, template: str) -> str:
    """The input text inside a templated prompt (`template` with its {text} slot filled)."""
    head, _, tail = template.partition("{text}")
    if text.startswith(head) and text.endswith(tail):
        return text[len(head) : len(text) - len(tail)]
    return text


# ---------------------------------------------------------------- field checks


def _text(value, field: str, allow_empty: bool = False) -> str:
    """A required string field, stripped; raises _Bad with the reason code."""
    if value is None:
        raise _Bad("missing_field", field, f"'{field}' is missing or null")
    if isinstance(value, float) and math.isnan(value):
        raise _Bad("nan", field, f"'{field}' is NaN (a missing value in a CSV/Parquet cell)")
    if not isinstance(value, str):
        raise _Bad("wrong_type", field, f"'{field}' is a {type(value).__name__}, expected a string")
    if has_surrogate(value):
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
    elif shape == "text":  # a document: no turns, no template; `key` makes dedup and contamination see it whole
        prompt, rec["completion"] = [], _text(row.get("text"), "text")
        return {"shape": shape, "prompt": prompt, **rec, "key": rec["completion"]}
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


def _check_whole_file(rows: list[dict], shape: str, columns, key: str) -> None:
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
                            f"Rename them with {key}.columns, or set {key}.shape ({SHAPE_HELP}).")


def normalize(rows: list[dict], shape: str, *, columns: dict[str, str] | None = None, labels: set[str] | None = None,
              template: str | None = None, system_prompt: str | None = None, rejected: list,
              key: str = "data") -> list[dict]:
    """Rows of one shape -> canonical records {source, line, shape, prompt, completion, label, chosen, rejected};
    every other row goes to `rejected` with a reason code."""
    if shape not in SHAPES:
        raise DataError(f"unknown {key}.shape {shape!r}: {hint(str(shape), SHAPES)}")
    template = check_template(template or "{text}", need_text=shape == "classification")
    rows = rename(rows, columns, key)
    _check_whole_file(rows, shape, columns, key)
    inverse = {v: k for k, v in (columns or {}).items()}
    out = []
    for row in rows:
        src, line = row.get("_source", "?"), row.get("_line", 0)
        original = {inverse.get(k, k): v for k, v in row.items()} if inverse else row
        if not _fits(shape, row):
            # Any row with a text field fits `text`: that says nothing about which other shape it was meant as.
            others = [s for s in SHAPES if s != "text" and _fits(s, row)]
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
