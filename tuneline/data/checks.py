"""The row checks of `validate` and the ledger their policies write to.

    tuneline validate configs/default.yaml          # runs every check; data.checks.* sets each policy
    apply(recs, [("hygiene", check_hygiene(recs), "drop")], ledger, stats)

Each `check_*` returns {row index: (reason, field, detail)} for the rows it flags and changes nothing;
`apply` carries out the check's policy (data.checks.*): report keeps the rows and lists them as
flagged, drop quarantines them in the ledger, fail keeps them and lets the gate stop the run.
"""

from __future__ import annotations

import json
import re

import pandas as pd

from tuneline.config import DataConfig
from tuneline.data import contamination, dedup
from tuneline.data.readers import reject
from tuneline.data.records import messages, row_id

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Ledger:
    """Where every quarantined, changed or flagged row is written, with the policy's action."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, rec: dict, reason: str, fld: str, detail: str, action: str) -> None:
        row = rec.get("raw") or {k: rec.get(k) for k in ("prompt", "completion", "label", "chosen", "rejected")}
        reject(self.rows, rec["source"], rec["line"], reason, fld, detail, row)
        self.rows[-1]["action"] = action

    def add_read_rejects(self, rejected: list[dict]) -> None:
        """Rows rejected while reading or normalizing: always dropped."""
        self.rows += [{**d, "action": "dropped"} for d in rejected]


def apply(recs: list[dict], checks: list[tuple[str, dict, str]], ledger: Ledger, stats: dict) -> list[dict]:
    """Apply each check's policy to the rows it flagged; `checks` = [(name, {index: (reason, field, detail)}, policy)].

    The flags of all `checks` refer to the same `recs` indices; a row flagged twice is logged once.
    """
    drop, seen = set(), set()
    for check, flagged, policy in checks:
        stats[check] = {"policy": policy, "flagged": len(flagged)}
        action = "dropped" if policy == "drop" else "flagged"
        for i, (reason, fld, detail) in flagged.items():
            if i not in seen:
                seen.add(i)
                ledger.add(recs[i], reason, fld, detail, action)
            if policy == "drop":
                drop.add(i)
    return [r for i, r in enumerate(recs) if i not in drop]


def key_text(rec: dict) -> str:
    """The text that makes a row itself: its user/assistant prompt turns, without the shared system turn
    or the classification template (text every row shares would make all rows look alike)."""
    if "key" in rec:
        return rec["key"]
    return "\n".join(m["content"] for m in rec["prompt"] if m["role"] != "system")


# --- per-row contract ------------------------------------------------------------------------------


def check_expectations(recs: list[dict], shape: str, labels: list[str] | None) -> tuple[dict, object]:
    from tuneline.data import expectations  # Great Expectations takes seconds to import: only when validating

    frame = pd.DataFrame([_gx_row(r, shape) for r in recs])
    result = expectations.run_suite(frame, shape, labels)
    flagged = {i: ("expectations", ",".join(names), "failed the Great Expectations suite: " + ", ".join(names))
               for i, names in expectations.failing_rows(result).items()}
    return flagged, result


def _gx_row(r: dict, shape: str) -> dict:
    return {"source": r["source"], "line": r["line"], "shape": shape, "prompt": json.dumps(r["prompt"]),
            "completion": r["completion"], "label": r.get("label"), "chosen": r.get("chosen"),
            "rejected": r.get("rejected")}


def check_hygiene(recs: list[dict]) -> dict:
    flagged = {}
    for i, r in enumerate(recs):
        answers = [r["completion"] or "", r.get("chosen") or "", r.get("rejected") or ""]
        texts = [m["content"] for m in r["prompt"]] + answers
        if any(_CONTROL.search(t) for t in texts):
            flagged[i] = ("control_chars", "text", "control characters (not newline/tab) in the text")
        elif r["prompt"] and r["completion"] and (  # a document (no prompt) is its own key text
                dedup.normalize_text(r["completion"]) == dedup.normalize_text(key_text(r))):
            flagged[i] = ("answer_is_prompt", "completion", "the answer repeats the prompt")
    return flagged


# --- duplicates, leakage, contamination ------------------------------------------------------------


def check_exact_duplicates(recs: list[dict]) -> dict:
    return {i: ("duplicate", "prompt", f"same normalized text as {row_id(recs[j])}")
            for i, j in dedup.exact_duplicates([key_text(r) for r in recs]).items()}


def check_duplicates(recs: list[dict], threshold: float) -> tuple[dict, dict]:
    """(exact, near) duplicate flags; near-duplicates are looked for among the rows that are not exact ones."""
    texts = [key_text(r) for r in recs]
    exact = check_exact_duplicates(recs)
    rest = [i for i in range(len(recs)) if i not in exact]
    near = dedup.near_duplicates([texts[i] for i in rest], threshold=threshold)
    flagged_near = {rest[i]: ("near_duplicate", "prompt", f"~{sim:.2f} Jaccard with {row_id(recs[rest[j]])}")
                    for i, (j, sim) in near.items()}
    return exact, flagged_near


def check_leakage(train: list[dict], held_out: list[dict], threshold: float) -> dict:
    hits = dedup.cross_duplicates([key_text(r) for r in train], [key_text(r) for r in held_out], threshold=threshold)
    return {i: ("eval_leak", "prompt", f"~{sim:.2f} Jaccard with eval row {row_id(held_out[j])}")
            for i, (j, sim) in hits.items()}


def _whole_text(rec: dict) -> str:
    """The row's input and answer as one text; a document (shape text) is both, so it counts once."""
    if rec.get("shape") == "text":
        return rec["completion"]
    return key_text(rec) + "\n" + (rec["completion"] or "")


def check_contamination(recs: list[dict], index) -> dict:
    flagged = {}
    for i, r in enumerate(recs):
        hit = index.find(_whole_text(r))
        if hit:
            flagged[i] = ("contamination", "prompt", f"shares a {index.n}-gram with {hit[0]}: {hit[1][:120]!r}")
    return flagged


def contamination_index(cfg: DataConfig, eval_recs: list[dict], mmlu_subjects: list[str] | None):
    index = contamination.NgramIndex(cfg.checks.contamination_ngram)
    names = cfg.checks.contamination_benchmarks
    if "mmlu" in names:
        index.add("MMLU", contamination.mmlu_texts(subjects=mmlu_subjects))
    if "gsm8k" in names:
        index.add("GSM8K", contamination.gsm8k_texts())
    if "eval" in names:
        index.add("the task eval split", [_whole_text(r) for r in eval_recs])
    return index


# --- lengths ---------------------------------------------------------------------------------------


def token_lengths(chats: list[list[dict]], tokenizer) -> list[int]:
    """Token counts after the chat template, tokenized in one batch (fast tokenizer)."""
    if not chats:
        return []
    rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in chats]
    return [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def document_lengths(texts: list[str], tokenizer) -> list[int]:
    """Token counts of raw documents (shape text): no chat template, as continued pretraining trains them."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def chat(rec: dict) -> list[dict]:
    """The chat a canonical record trains on: its prompt turns and its answer."""
    return messages({"prompt": rec["prompt"], "assistant": rec["completion"]})


def check_lengths(recs: list[dict], cfg: DataConfig, tokenizer) -> tuple[dict, int]:
    """Too long (policy data.checks.length) or too short (always dropped); returns flags and truncations.

    Documents (shape text) are counted without a template and are never too long: training packs them into
    data.max_tokens blocks, a longer document running on into the next block."""
    if recs and all(r.get("shape") == "text" for r in recs):
        lengths = document_lengths([r["completion"] for r in recs], tokenizer)
        return {i: ("too_short", "text", f"{n} tokens < data.min_tokens={cfg.min_tokens}")
                for i, n in enumerate(lengths) if n < cfg.min_tokens}, 0
    lengths = token_lengths([chat(r) for r in recs], tokenizer)
    flagged, truncated = {}, 0
    for i, (r, n) in enumerate(zip(recs, lengths)):
        if n < cfg.min_tokens:
            flagged[i] = ("too_short", "completion", f"{n} tokens < data.min_tokens={cfg.min_tokens}")
        elif n > cfg.max_tokens and cfg.checks.length == "truncate" and _truncate(r, n - cfg.max_tokens, tokenizer):
            truncated += 1
        elif n > cfg.max_tokens:
            flagged[i] = ("too_long", "prompt",
                          f"{n} tokens after the chat template > data.max_tokens={cfg.max_tokens}")
    return flagged, truncated


def _truncate(rec: dict, excess: int, tokenizer) -> bool:
    """Cut the answer's tail by `excess` tokens (the prompt stays whole); False when that empties it."""
    ids = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
    if len(ids) <= excess + 1:
        return False
    rec["completion"] = tokenizer.decode(ids[: len(ids) - excess - 1])
    rec["truncated"] = True
    return True


def apply_lengths(recs: list[dict], cfg: DataConfig, tokenizer, ledger: Ledger, stats: dict, name: str) -> list[dict]:
    """check_lengths with its policies: too short is dropped, too long follows data.checks.length."""
    flagged, truncated = check_lengths(recs, cfg, tokenizer)
    for r in recs:
        if r.pop("truncated", False):
            ledger.add(r, "truncated", "completion", f"answer cut to fit data.max_tokens={cfg.max_tokens}", "changed")
    short = {i: f for i, f in flagged.items() if f[0] == "too_short"}
    long = {i: f for i, f in flagged.items() if f[0] != "too_short"}
    policy = "drop" if cfg.checks.length == "truncate" else cfg.checks.length
    out = apply(recs, [(f"too_short_{name}", short, "drop"), (f"length_{name}", long, policy)], ledger, stats)
    stats[f"length_{name}"]["truncated"] = truncated
    return out
