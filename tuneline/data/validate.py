"""Load the task and preference data, check it, and split it into the records training reads.

    tuneline validate configs/default.yaml          # prints the validation counts and the gate verdict
    v = validate(cfg.data, tokenizer); failures = gate(v, cfg.data)

Every input row ends up in exactly one place: a split (train / mining / eval), `unused`, or
dropped into `rejected` with a reason code; `accepted + dropped == input` is asserted. Bad files
fail with the path and what to do; bad rows are quarantined with file, line, field and reason.
Checks whose policy is `report` keep their rows and list them as `flagged`; `fail` keeps them too
and makes the gate (`gate()`) stop the run before training, after the report is stored.
Reading a source is in tuneline/data/sources.py, the checks in checks.py, the splits in splits.py,
the tables' columns in records.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tuneline.config import DataConfig
from tuneline.data.checks import (
    Ledger,
    apply,
    apply_lengths,
    check_contamination,
    check_duplicates,
    check_exact_duplicates,
    check_expectations,
    check_hygiene,
    check_leakage,
    contamination_index,
)
from tuneline.data.records import PREF_COLUMNS, REJECT_COLUMNS, TASK_COLUMNS, to_record
from tuneline.data.sources import Source, locate, read_labels, read_source
from tuneline.data.splits import balance_stats, general_mix, preference_pairs, rebalance, stratified


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


def validate(cfg: DataConfig, tokenizer, mmlu_subjects: list[str] | None = None,
             copies: dict[str, str] | None = None) -> Validated:
    """Load, check and split the configured data; every input row is accounted for.

    `copies` maps a config key (train_file, ..., general_mix.file) to a copy to read instead of the
    configured file (a snapshot: RawDataDir.copies()); rows and errors still name the configured file.
    """
    copies = copies or {}

    def source(key: str, name: str) -> Source:
        return locate(name, copies.get(key))

    labels = read_labels(source("labels_file", cfg.labels_file)) if cfg.labels_file else None
    rng = random.Random(cfg.seed)
    ledger, stats, gx, c = Ledger(), {}, [], cfg.checks
    read_dropped: list = []
    how = {"shape": cfg.shape, "columns": cfg.columns, "template": cfg.prompt_template,
           "system_prompt": cfg.system_prompt}
    train_read = read_source(source("train_file", cfg.train_file), read_dropped, **how)
    train, shape, n_train = train_read.records, train_read.shape, train_read.rows_in
    test, test_shape, n_test = [], shape, 0
    if cfg.test_file:
        test_read = read_source(source("test_file", cfg.test_file), read_dropped, **how)
        test, test_shape, n_test = test_read.records, test_read.shape, test_read.rows_in
    ledger.add_read_rejects(read_dropped)
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
        test = apply(test, [("duplicate_test", check_exact_duplicates(test), "drop")], ledger, stats)

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
    mix, mix_stats = ([], {})
    if cfg.general_mix:
        mix, mix_stats = general_mix(cfg, source("general_mix.file", cfg.general_mix.file), len(chosen), tokenizer, rng)
    splits = {"train": chosen + mix, "mining": mining, "eval": eval_rows}
    task = pd.DataFrame([to_record(r, s) for s, rows in splits.items() for r in rows], columns=TASK_COLUMNS)

    prefs, pref_stats = ([], {})
    if cfg.preference_rows:
        prefs, pref_stats = preference_pairs(cfg, source("preference_file", cfg.preference_file), ledger)
    rejected = pd.DataFrame(ledger.rows, columns=REJECT_COLUMNS)
    counts = _counts(task, rejected, n_train + n_test, len(unused) + len(test_unused), labels, shape, pref_stats,
                     sum(bool(r.get("upsampled")) for r in chosen), len(mix), cfg)
    v = Validated(task=task, preferences=pd.DataFrame(prefs, columns=PREF_COLUMNS), rejected=rejected,
                  counts=counts | mix_stats, checks=stats,
                  balance={"train_before": balance_before, "train": balance_stats(chosen)}, gx=gx)
    v.gate_failures = gate(v, cfg)
    return v


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
