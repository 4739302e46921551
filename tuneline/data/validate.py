"""Load the task and preference data, check it, and split it into normalized records.

    python -m tuneline.data.validate configs/default.yaml   # prints the validation counts and the gate verdict

Every input row ends up in exactly one place: a split (train / mining / eval), `unused`, or
dropped into `rejected` with a reason code; `accepted + dropped == input` is asserted. Bad files
fail with the path and what to do; bad rows are quarantined with file, line, field and reason.
Checks whose policy is `report` keep their rows and list them as `flagged`; `fail` keeps them too
and makes the gate (`gate()`) stop the run before training, after the report is stored.

Records are one flat table (a pandas DataFrame) so ZenML stores them as Parquet:
- task rows: id, split, source, line, shape, prompt (JSON list of messages), assistant, label
- preference rows: id, source, line, prompt (JSON list of messages), chosen, rejected
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tuneline.data import contamination

from tuneline.data import dedup
from tuneline.config import DataConfig, resolve
from tuneline.data.readers import DataError, file_shape, normalize, read_rows, rename
from tuneline.data.readers import hh_prompt_messages as hh_prompt_messages  # re-exported for callers
from tuneline.data.readers import reject as _reject_row

TASK_COLUMNS = ["id", "split", "source", "line", "shape", "prompt", "assistant", "label"]
PREF_COLUMNS = ["id", "source", "line", "prompt", "chosen", "rejected"]
REJECT_COLUMNS = ["source", "line", "reason", "field", "detail", "row", "action"]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

__all__ = ["DataError", "Validated", "validate", "gate", "messages", "hh_prompt_messages", "read_general_texts"]


@dataclass
class Validated:
    task: pd.DataFrame
    preferences: pd.DataFrame
    rejected: pd.DataFrame  # dropped, changed and flagged rows, each with its reason (column `action`)
    counts: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # check -> {policy, flagged}
    balance: dict = field(default_factory=dict)
    gx: list = field(default_factory=list)  # one GXResult per input file
    gate_failures: list[str] = field(default_factory=list)


class _Ledger:
    """Where every quarantined, changed or flagged row is written, with the policy's action."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, rec: dict, reason: str, fld: str, detail: str, action: str) -> None:
        row = rec.get("raw") or {k: rec.get(k) for k in ("prompt", "completion", "label", "chosen", "rejected")}
        _reject_row(self.rows, rec["source"], rec["line"], reason, fld, detail, row)
        self.rows[-1]["action"] = action

    def dropped(self) -> int:
        return sum(r.get("action", "dropped") == "dropped" for r in self.rows)


def read_labels(path: Path) -> list[str]:
    try:
        labels = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; set data.labels_file (null for non-classification data)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected a JSON list of label strings") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


def messages(record: dict, with_answer: bool = True) -> list[dict]:
    """The chat for one task record: its prompt turns, then the gold answer as the assistant turn."""
    msgs = json.loads(record["prompt"]) if isinstance(record["prompt"], str) else list(record["prompt"])
    if with_answer:
        msgs.append({"role": "assistant", "content": record["assistant"]})
    return msgs


def key_text(rec: dict) -> str:
    """The text that makes a row itself: its user/assistant prompt turns, without the shared system turn
    or the classification template (text every row shares would make all rows look alike)."""
    if "key" in rec:
        return rec["key"]
    return "\n".join(m["content"] for m in rec["prompt"] if m["role"] != "system")


def strip_template(text: str, template: str) -> str:
    head, _, tail = template.partition("{text}")
    if text.startswith(head) and text.endswith(tail):
        return text[len(head) : len(text) - len(tail)]
    return text


# --- reading --------------------------------------------------------------------------------------


def load_records(source: str, cfg: DataConfig, labels: list[str] | None, shape: str, columns: dict,
                 dropped: list) -> tuple[list[dict], str, int]:
    """Normalized records of one source, its shape and its input row count (read-time rejects included)."""
    before = len(dropped)
    raw = read_rows(_path_or_id(source), dropped)
    read_rejects = len(dropped) - before
    if not raw:
        raise DataError(f"{source}: no usable rows ({read_rejects} rejected while reading); see the rejected_rows artifact")
    # The first row that fits a shape decides the file's; other rows are rejected as shape_mismatch.
    shape = file_shape(rename(raw, columns), source) if shape == "auto" else shape
    # Labels are checked by the Great Expectations suite, so the report shows them (not normalize).
    recs = normalize(raw, shape, columns=columns or None, labels=None, template=cfg.prompt_template,
                     system_prompt=cfg.system_prompt, rejected=dropped)
    for r, original in zip(recs, _originals(raw, recs)):
        r["raw"] = original
        if shape == "classification":
            r["key"] = strip_template(r["prompt"][-1]["content"], cfg.prompt_template)
    return recs, shape, len(raw) + read_rejects


def _originals(raw: list[dict], recs: list[dict]) -> list[dict]:
    by_line = {(str(r.get("_source")), r.get("_line")): r for r in raw}
    out = []
    for rec in recs:
        r = by_line.get((str(rec["source"]), rec["line"]), {})
        out.append({k: v for k, v in r.items() if not k.startswith("_")})
    return out


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _path_or_id(source: str) -> str | Path:
    """A local path when it exists or looks like a file; otherwise an 'owner/name' hub dataset id."""
    p = resolve(source)
    return source if not p.exists() and _HUB_ID.match(source) and not Path(source).suffix else p


# --- checks ---------------------------------------------------------------------------------------


def apply(recs: list[dict], checks: list[tuple[str, dict, str]], ledger: _Ledger, stats: dict) -> list[dict]:
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
        texts = [m["content"] for m in r["prompt"]] + [r["completion"] or "", r.get("chosen") or "", r.get("rejected") or ""]
        if any(_CONTROL.search(t) for t in texts):
            flagged[i] = ("control_chars", "text", "control characters (not newline/tab) in the text")
        elif r["completion"] and dedup.normalize_text(r["completion"]) == dedup.normalize_text(key_text(r)):
            flagged[i] = ("answer_is_prompt", "completion", "the answer repeats the prompt")
    return flagged


def dedup_exact(recs: list[dict]) -> dict:
    return {i: ("duplicate", "prompt", f"same normalized text as {_where(recs[j])}")
            for i, j in dedup.exact_duplicates([key_text(r) for r in recs]).items()}


def check_duplicates(recs: list[dict], threshold: float) -> tuple[dict, dict]:
    texts = [key_text(r) for r in recs]
    flagged_exact = dedup_exact(recs)
    exact = flagged_exact
    rest = [i for i in range(len(recs)) if i not in exact]
    near = dedup.near_duplicates([texts[i] for i in rest], threshold=threshold)
    flagged_near = {rest[i]: ("near_duplicate", "prompt", f"~{sim:.2f} Jaccard with {_where(recs[rest[j]])}")
                    for i, (j, sim) in near.items()}
    return flagged_exact, flagged_near


def check_leakage(train: list[dict], held_out: list[dict], threshold: float) -> dict:
    hits = dedup.cross_duplicates([key_text(r) for r in train], [key_text(r) for r in held_out], threshold=threshold)
    return {i: ("eval_leak", "prompt", f"~{sim:.2f} Jaccard with eval row {_where(held_out[j])}")
            for i, (j, sim) in hits.items()}


def check_contamination(recs: list[dict], index) -> dict:
    flagged = {}
    for i, r in enumerate(recs):
        hit = index.find(key_text(r) + "\n" + (r["completion"] or ""))
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
        index.add("the task eval split", [key_text(r) + "\n" + r["completion"] for r in eval_recs])
    return index


def check_lengths(recs: list[dict], cfg: DataConfig, tokenizer) -> tuple[dict, int]:
    """Too long (policy data.checks.length) or too short (always dropped); returns flags and truncations."""
    lengths = token_lengths([messages(_task_view(r)) for r in recs], tokenizer)
    flagged, truncated = {}, 0
    for i, (r, n) in enumerate(zip(recs, lengths)):
        if n < cfg.min_tokens:
            flagged[i] = ("too_short", "completion", f"{n} tokens < data.min_tokens={cfg.min_tokens}")
        elif n > cfg.max_tokens and cfg.checks.length == "truncate" and _truncate(r, n - cfg.max_tokens, tokenizer):
            truncated += 1
        elif n > cfg.max_tokens:
            flagged[i] = ("too_long", "prompt", f"{n} tokens after the chat template > data.max_tokens={cfg.max_tokens}")
    return flagged, truncated


def _truncate(rec: dict, excess: int, tokenizer) -> bool:
    """Cut the answer's tail by `excess` tokens (the prompt stays whole); False when that empties it."""
    ids = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
    if len(ids) <= excess + 1:
        return False
    rec["completion"] = tokenizer.decode(ids[: len(ids) - excess - 1])
    rec["truncated"] = True
    return True


def token_lengths(chats: list[list[dict]], tokenizer) -> list[int]:
    """Token counts after the chat template, tokenized in one batch (fast tokenizer)."""
    if not chats:
        return []
    rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in chats]
    return [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def _where(rec: dict) -> str:
    return f"{Path(rec['source']).name}:{rec['line']}"


def _task_view(r: dict) -> dict:
    return {"prompt": r["prompt"], "assistant": r["completion"]}


# --- balance and splits ---------------------------------------------------------------------------


def class_of(r: dict) -> str | None:
    return r.get("label") or (r.get("raw") or {}).get("category")


def balance_stats(recs: list[dict]) -> dict:
    counts = Counter(c for c in map(class_of, recs) if c is not None)
    if not counts:
        return {}
    n, k = sum(counts.values()), len(counts)
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    return {"classes": k, "rows": n, "min": min(counts.values()), "max": max(counts.values()),
            "max_min_ratio": round(max(counts.values()) / min(counts.values()), 3),
            "normalized_entropy": round(entropy / math.log(k), 4) if k > 1 else 1.0,
            "counts": dict(sorted(counts.items()))}


def rebalance(recs: list[dict], cfg: DataConfig, ledger: _Ledger, rng: random.Random) -> list[dict]:
    """cap: drop rows beyond `balance.cap` per class (quarantined); upsample: repeat up to `balance.floor`."""
    b = cfg.balance
    by_class: dict = defaultdict(list)
    for r in recs:
        by_class[class_of(r)].append(r)
    if b.policy == "cap" and b.cap:
        out = []
        for cls, group in by_class.items():
            out += group[: b.cap]
            for r in group[b.cap:]:
                ledger.add(r, "balance_cap", "label", f"class {cls!r} has {len(group)} rows > data.balance.cap={b.cap}", "dropped")
        return out
    if b.policy == "upsample" and b.floor:
        extra = []
        for group in by_class.values():
            for k in range(max(0, b.floor - len(group))):
                extra.append({**rng.choice(group), "upsampled": k + 1})
        return recs + extra
    return recs


def stratified(rows: list[dict], per_label: int | None, total: int | None, rng: random.Random) -> tuple[list, list]:
    """Take `per_label` rows of each class (or `total` rows round-robin over classes); return (taken, rest)."""
    by_label: dict[str, list] = defaultdict(list)
    for r in rows:
        by_label[str(class_of(r))].append(r)
    for group in by_label.values():
        rng.shuffle(group)
    taken: list = []
    if per_label is not None:
        for label in sorted(by_label):
            taken += by_label[label][:per_label]
    else:
        depth = 0
        while len(taken) < (total or 0) and any(len(g) > depth for g in by_label.values()):
            for label in sorted(by_label):
                if depth < len(by_label[label]) and len(taken) < total:
                    taken.append(by_label[label][depth])
            depth += 1
    ids = {id(r) for r in taken}
    return taken, [r for r in rows if id(r) not in ids]


def to_record(r: dict, split: str) -> dict:
    copy = f"#{r['upsampled']}" if r.get("upsampled") else ""  # upsampled repeats keep unique ids
    return {"id": f"{Path(r['source']).name}:{r['line']}{copy}", "split": split, "source": str(r["source"]),
            "line": int(r["line"]), "shape": r["shape"], "prompt": json.dumps(r["prompt"], ensure_ascii=False),
            "assistant": r["completion"], "label": r.get("label")}


# --- preferences ------------------------------------------------------------------------------------


def load_preferences(cfg: DataConfig, ledger: _Ledger) -> tuple[list[dict], dict]:
    """User preference pairs (prompt/chosen/rejected or HH transcripts): the `preference_rows` shortest."""
    dropped: list = []
    recs, shape, n_in = load_records(cfg.preference_file, cfg, None, "auto", {}, dropped)
    for d in dropped:
        ledger.rows.append({**d, "action": "dropped"})
    if shape not in ("preference", "hh_preference"):
        raise DataError(f"{cfg.preference_file}: found {shape} rows, expected preference pairs (prompt/chosen/rejected "
                        "or HH-RLHF chosen/rejected transcripts); fix data.preference_file")
    kept = []
    for r in recs:
        if dedup.normalize_text(r["chosen"]) == dedup.normalize_text(r["rejected"]):
            ledger.add(r, "identical_pair", "chosen", "chosen == rejected after normalization", "dropped")
        else:
            kept.append(r)
    stats = {"pairs_in": n_in, "identical_pairs": len(recs) - len(kept),
             "chosen_longer_share": round(sum(len(r["chosen"]) > len(r["rejected"]) for r in kept) / max(len(kept), 1), 3)}
    kept.sort(key=lambda r: len(key_text(r)) + len(r["chosen"]) + len(r["rejected"]))
    for r in kept[cfg.preference_rows:]:
        r["unused"] = True
    chosen = kept[: cfg.preference_rows]
    stats["pairs_used"] = len(chosen)
    return [{"id": f"{Path(r['source']).name}:{r['line']}", "source": str(r["source"]), "line": int(r["line"]),
             "prompt": json.dumps(r["prompt"], ensure_ascii=False), "chosen": r["chosen"].strip(),
             "rejected": r["rejected"].strip()} for r in chosen], stats


# --- the whole validation ---------------------------------------------------------------------------


def validate(cfg: DataConfig, tokenizer, mmlu_subjects: list[str] | None = None) -> Validated:
    """Load, check and split the configured data; every input row is accounted for."""
    labels = read_labels(resolve(cfg.labels_file)) if cfg.labels_file else None
    rng = random.Random(cfg.seed)
    ledger, stats, gx, c = _Ledger(), {}, [], cfg.checks
    read_dropped: list = []
    train, shape, n_train = load_records(cfg.train_file, cfg, labels, cfg.shape, cfg.columns, read_dropped)
    test, test_shape, n_test = ([], shape, 0) if not cfg.test_file else \
        load_records(cfg.test_file, cfg, labels, cfg.shape, cfg.columns, read_dropped)
    ledger.rows += [{**d, "action": "dropped"} for d in read_dropped]
    stats["read"] = {"policy": "drop", "flagged": len(read_dropped)}

    # Per-row contract (Great Expectations), hygiene and length on each source.
    for name, recs, shp in (("train", train, shape), ("test", test, test_shape)):
        if recs:
            flagged, result = check_expectations(recs, shp, labels)
            gx.append({"source": name, "shape": shp, "result": result})
            recs[:] = apply(recs, [(f"expectations_{name}", flagged, c.expectations)], ledger, stats)
            recs[:] = apply(recs, [(f"hygiene_{name}", check_hygiene(recs), c.hygiene)], ledger, stats)
            recs[:] = apply_lengths(recs, cfg, tokenizer, ledger, stats, name)
    if test:  # a repeated eval row would count twice in every score
        test = apply(test, [("duplicate_test", dedup_exact(test), "drop")], ledger, stats)

    # Held-out rows first, so nothing that resembles them can reach training.
    if test:
        eval_rows, test_unused = stratified(test, None, cfg.eval_rows, rng)
    else:
        eval_rows, train = stratified(train, None, cfg.eval_rows, rng)
        test_unused = []
    train = apply(train, [("leakage", check_leakage(train, eval_rows, c.near_duplicate_threshold), c.leakage)],
                  ledger, stats)
    exact, near = check_duplicates(train, c.near_duplicate_threshold)
    train = apply(train, [("duplicate", exact, c.duplicate), ("near_duplicate", near, c.near_duplicate)], ledger, stats)
    index = contamination_index(cfg, eval_rows, mmlu_subjects)
    train = apply(train, [("contamination", check_contamination(train, index), c.contamination)], ledger, stats)

    chosen, rest = stratified(train, cfg.rows_per_label, None, rng) if cfg.rows_per_label and labels else (train, [])
    balance_before = balance_stats(chosen)
    chosen = rebalance(chosen, cfg, ledger, rng)
    mining, unused = stratified(rest, None, cfg.mining_rows, rng)
    mix, mix_stats = general_mix(cfg, len(chosen), tokenizer, rng) if cfg.general_mix else ([], {})
    splits = {"train": chosen + mix, "mining": mining, "eval": eval_rows}
    task = pd.DataFrame([to_record(r, s) for s, rows in splits.items() for r in rows], columns=TASK_COLUMNS)

    prefs, pref_stats = load_preferences(cfg, ledger) if cfg.preference_rows else ([], {})
    rejected = pd.DataFrame(ledger.rows, columns=REJECT_COLUMNS)
    counts = _counts(task, rejected, n_train + n_test, len(unused) + len(test_unused), labels, shape, pref_stats,
                     sum(bool(r.get("upsampled")) for r in chosen), len(mix), cfg)
    v = Validated(task=task, preferences=pd.DataFrame(prefs, columns=PREF_COLUMNS), rejected=rejected,
                  counts=counts | mix_stats, checks=stats,
                  balance={"train_before": balance_before, "train": balance_stats(chosen)}, gx=gx)
    v.gate_failures = gate(v, cfg)
    return v


def apply_lengths(recs: list[dict], cfg: DataConfig, tokenizer, ledger: _Ledger, stats: dict, name: str) -> list[dict]:
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


def _counts(task, rejected, n_input, n_unused, labels, shape, pref_stats, upsampled, mixed, cfg) -> dict:
    task_rej = rejected[~rejected["source"].astype(str).str.endswith(Path(cfg.preference_file).name)]
    dropped = int((task_rej["action"] == "dropped").sum())
    accepted = len(task) - upsampled - mixed
    counts = {"input_rows": n_input, "accepted": accepted, "dropped": dropped, "unused": n_unused,
              "changed": int((task_rej["action"] == "changed").sum()),
              "flagged": int((task_rej["action"] == "flagged").sum()), "upsampled": upsampled, "general_mix": mixed,
              "shape": shape, "labels": len(labels) if labels else 0,
              **{f"split_{k}": int(v) for k, v in task["split"].value_counts().items()}, **pref_stats}
    accounted = accepted + dropped + n_unused
    assert accounted == n_input, f"row accounting broke: {accepted} accepted + {dropped} dropped + {n_unused} unused != {n_input} input"
    counts["reasons"] = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
    return counts


def general_mix(cfg: DataConfig, n_task: int, tokenizer, rng: random.Random) -> tuple[list[dict], dict]:
    """`fraction` of the final training set drawn from a general instruction set, with its provenance.

    Its rows are not task input: they are not in the row accounting, only in these counts.
    """
    mix = cfg.general_mix
    dropped: list = []
    recs, shape, n_in = load_records(mix.file, cfg, None, mix.shape, mix.columns, dropped)
    lengths = token_lengths([messages(_task_view(r)) for r in recs], tokenizer)
    fits = [r for r, n in zip(recs, lengths) if cfg.min_tokens <= n <= cfg.max_tokens]
    want = round(n_task * mix.fraction / (1 - mix.fraction))
    if want > len(fits):
        raise DataError(f"{mix.file}: {len(fits)} rows fit data.max_tokens, {want} needed for data.general_mix.fraction="
                        f"{mix.fraction}; lower the fraction, raise max_tokens or use a larger file")
    rng.shuffle(fits)
    for r in fits:
        r["label"] = None
    return fits[:want], {"general_mix_file": mix.file, "general_mix_shape": shape, "general_mix_rows_in": n_in,
                         "general_mix_unusable": len(dropped) + len(recs) - len(fits)}


def gate(v: Validated, cfg: DataConfig) -> list[str]:
    """Reasons to stop before training; empty when the data may be used. Each names its config key."""
    g, failures = cfg.gate, []
    n, dropped = v.counts["input_rows"], v.counts["dropped"]
    if n and dropped / n > g.max_rejected_fraction:
        failures.append(f"{dropped} of {n} rows ({dropped / n:.1%}) were rejected, more than "
                        f"data.gate.max_rejected_fraction={g.max_rejected_fraction}; reasons: {v.counts['reasons']}")
    for check, s in v.checks.items():
        if s.get("policy") == "fail" and s.get("flagged"):
            key = re.sub(r"_(train|test)$", "", check)
            failures.append(f"check '{check}' flagged {s['flagged']} rows and its policy is fail "
                            f"(data.checks.{key}: set report or drop to go on)")
    found = v.checks.get("contamination", {}).get("flagged", 0)
    if g.fail_on_contamination and found:
        failures.append(f"{found} training rows share a {cfg.checks.contamination_ngram}-gram with an evaluation "
                        "benchmark (data.gate.fail_on_contamination=true)")
    small = {c: k for c, k in v.balance.get("train", {}).get("counts", {}).items() if k < g.min_rows_per_class}
    if small:
        failures.append(f"{len(small)} classes have fewer than data.gate.min_rows_per_class={g.min_rows_per_class} "
                        f"training rows: {dict(list(small.items())[:5])}")
    if not (v.task["split"] == "train").any() or not (v.task["split"] == "eval").any():
        failures.append("no train or no eval rows are left after validation")
    return failures


def read_general_texts(path: Path, field: str, rows: int, min_words: int) -> list[str]:
    """The last `rows` texts of a JSONL file with at least `min_words` words (held-out general text)."""
    texts = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    text = str(json.loads(line).get(field) or "").strip()
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({e})") from None
                if len(text.split()) >= min_words:
                    texts.append(text)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; set evaluate.perplexity.file") from None
    if len(texts) < 2:
        raise DataError(f"{path}: fewer than 2 '{field}' texts with {min_words}+ words; set evaluate.perplexity.file/field")
    return texts[-rows:]


if __name__ == "__main__":
    import sys

    from tuneline.model.base import load_tokenizer, prepare
    from tuneline.config import load

    cfg = load(sys.argv[1])
    v = validate(cfg.data, load_tokenizer(prepare(cfg.base_model)),
                 cfg.evaluate.mmlu.subjects if cfg.evaluate.mmlu else None)
    print(json.dumps({"counts": v.counts, "checks": v.checks, "balance": v.balance, "gate": v.gate_failures}, indent=2))
