"""Load the task and preference data, check it, and split it into the records training reads.

    tuneline validate configs/default.yaml          # prints the validation counts and the gate verdict
    v = validate(cfg.data, tokenizer, dpo=cfg.dpo.data_use()); failures = gate(v, cfg.data)

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

import pandas as pd

from tuneline.config import DataConfig, DPOData
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
from tuneline.data.generation import GenerationLength, carry, generation_length
from tuneline.data.readers import DataError
from tuneline.data.records import PREF_COLUMNS, REJECT_COLUMNS, TASK_COLUMNS, to_record
from tuneline.data.sources import Source, locate, read_labels, read_source, same_source
from tuneline.data.splits import (
    balance_stats,
    general_mix,
    preference_pairs,
    rebalance,
    stratified,
    training_sample,
)


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
    dpo: DPOData | None = None  # what DPO will take from this data (the gate checks it can get pairs)
    generation: GenerationLength | None = None  # data.max_new_tokens resolved (also on task.attrs)


def validate(cfg: DataConfig, tokenizer, mmlu_subjects: list[str] | None = None,
             copies: dict[str, str] | None = None, dpo: DPOData | None = None) -> Validated:
    """Load, check and split the configured data; every input row is accounted for.

    `copies` maps a config key (train_file, ..., general_mix.file, preference.file) to a copy to read instead
    of the configured file (a snapshot: RawDataDir.copies()); rows and errors still name the configured file.
    `dpo` (cfg.dpo.data_use()): where every row trains and DPO mines mistakes, data.mining_rows rows are split
    off the training rows for it; the gate fails when DPO could get no pairs. None: no DPO is planned.
    With data.tasks, each task is read this way and the tasks are mixed (tuneline/data/tasks.py).
    """
    if cfg.tasks is not None:
        from tuneline.data.tasks import validate_tasks  # imported here: it builds on this module

        return validate_tasks(cfg, tokenizer, mmlu_subjects, copies, dpo)
    v = checked(cfg, tokenizer, mmlu_subjects, copies, dpo)
    v.gate_failures = gate(v, cfg)
    return v


def checked(cfg: DataConfig, tokenizer, mmlu_subjects: list[str] | None = None,
            copies: dict[str, str] | None = None, dpo: DPOData | None = None) -> Validated:
    """One task's data read, checked and split (validate without the gate verdict)."""
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
    # The same file as both would put every eval row in training: read once, and the gate stops the run.
    if cfg.test_file and not same_source(cfg.train_file, cfg.test_file):
        test_read = read_source(source("test_file", cfg.test_file), read_dropped, **how)
        test, test_shape, n_test = test_read.records, test_read.shape, test_read.rows_in
        if test_shape != shape:
            raise DataError(f"{cfg.test_file}: its rows are {test_shape}, but data.train_file {cfg.train_file} is "
                            f"{shape}: the eval rows must be the task's shape. Point data.test_file at a {shape} "
                            f"file, or set data.test_file: null to hold out data.eval_rows rows of the training file")
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

    sample, split_counts = training_sample(train, cfg, shape, rng), {}
    if cfg.train_rows:
        split_counts = {"train_rows": cfg.train_rows, "train_rows_available": len(train)}
    # Raw text has no answers to get wrong: DPO cannot mine it (the config check and the gate say so).
    mines = dpo is not None and dpo.mine_mistakes and shape != "text"
    held_for_mining = sample is None and mines
    if held_for_mining:  # every row would train: mining gets rows of its own, seeded, disjoint from training
        mining, chosen = stratified(train, None, cfg.mining_rows, rng)
        split_counts["mining_held_out"] = len(mining)
    else:
        chosen, rest = sample or (train, [])
    balance_before = balance_stats(chosen)
    chosen = rebalance(chosen, cfg, ledger, rng)
    unused = []
    if not held_for_mining:  # the rows the sample left over
        no_mining = shape == "text" or (dpo is not None and not (dpo.enabled and dpo.mine_mistakes))  # nothing mines
        mining, unused = stratified(rest, None, 0 if no_mining else cfg.mining_rows, rng)
    mix, mix_stats = ([], {})
    if cfg.general_mix:
        mix, mix_stats = general_mix(cfg, source("general_mix.file", cfg.general_mix.file), len(chosen), tokenizer, rng)
    splits = {"train": chosen + mix, "mining": mining, "eval": eval_rows}
    task = pd.DataFrame([to_record(r, s) for s, rows in splits.items() for r in rows], columns=TASK_COLUMNS)
    # The task's own gold answers (not the general mix's) set how long every later generation may be.
    length = generation_length([r["completion"] for rows in (chosen, mining, eval_rows) for r in rows], tokenizer,
                               cfg.max_new_tokens, cfg.max_new_tokens_cap, closed_set=shape == "classification")
    carry(task, length)
    split_counts |= {"max_new_tokens": length.tokens, "max_new_tokens_why": length.reason()}

    prefs, pref_stats, task_rejects = [], {}, len(ledger.rows)
    if cfg.preference:
        prefs, pref_stats = preference_pairs(cfg.preference, cfg, source("preference.file", cfg.preference.file), ledger)
    rejected = pd.DataFrame(ledger.rows, columns=REJECT_COLUMNS)
    counts = _counts(task, rejected.iloc[:task_rejects], rejected, n_train + n_test, len(unused) + len(test_unused),
                     labels, shape, pref_stats | split_counts, sum(bool(r.get("upsampled")) for r in chosen), len(mix))
    v = Validated(task=task, preferences=pd.DataFrame(prefs, columns=PREF_COLUMNS), rejected=rejected,
                  counts=counts | mix_stats, checks=stats, generation=length,
                  balance={"train_before": balance_before, "train": balance_stats(chosen)}, gx=gx, dpo=dpo)
    return v


def _counts(task, task_rej, rejected, n_input, n_unused, labels, shape, extra, upsampled, mixed) -> dict:
    """The row accounting of the task data (preference pairs have their own, in `extra`)."""
    dropped = int((task_rej["action"] == "dropped").sum())
    accepted = len(task) - upsampled - mixed
    counts = {"input_rows": n_input, "accepted": accepted, "dropped": dropped, "unused": n_unused,
              "changed": int((task_rej["action"] == "changed").sum()),
              "flagged": int((task_rej["action"] == "flagged").sum()), "upsampled": upsampled, "general_mix": mixed,
              "shape": shape, "labels": len(labels) if labels else 0,
              **{f"split_{k}": int(v) for k, v in task["split"].value_counts().items()}, **extra}
    accounted = accepted + dropped + n_unused
    assert accounted == n_input, f"row accounting broke: {accepted} accepted + {dropped} dropped + {n_unused} unused != {n_input} input"
    counts["reasons"] = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
    return counts


def gate(v: Validated, cfg: DataConfig) -> list[str]:
    """Reasons to stop before training; empty when the data may be used. Each names its config key."""
    return data_failures(v, cfg) + dpo_failures(v, cfg)


def data_failures(v: Validated, cfg: DataConfig) -> list[str]:
    """The gate's checks of the data itself (multi-task: run per task; DPO's pairs are checked on the mix)."""
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
    if cfg.test_file and same_source(cfg.train_file, cfg.test_file):
        failures.append(f"data.train_file and data.test_file are the same file ({cfg.train_file}): every eval row "
                        "would also be a training row. Point data.test_file at a separate file, or set "
                        "data.test_file: null to hold out data.eval_rows rows of the training file")
    wanted, available = v.counts.get("train_rows"), v.counts.get("train_rows_available", 0)
    if wanted and wanted > available:
        failures.append(f"data.train_rows={wanted} but only {available} training rows are left after validation and "
                        f"the eval split: lower data.train_rows to at most {available}")
    held, kept = v.counts.get("mining_held_out", 0), v.counts.get("split_train", 0)
    if held > kept:  # mining rows are taken before training's: more of them than training rows is never the aim
        failures.append(f"data.mining_rows={cfg.mining_rows} holds out {held} rows for DPO to mine and leaves {kept} "
                        f"to train (every row of a {v.counts['shape']} file trains unless sampled): lower "
                        f"data.mining_rows (e.g. to {(held + kept) // 5}), or set dpo.mine_mistakes: false")
    return failures


def dpo_failures(v: Validated, cfg: DataConfig) -> list[str]:
    """DPO needs 2 pairs: fail before any training when the data cannot give them, naming what to change."""
    if v.dpo is None or not v.dpo.enabled:
        return []
    if v.counts["shape"] == "text" and v.dpo.mine_mistakes:
        return [("dpo.enabled with dpo.mine_mistakes, but the data is raw text (shape text): it has no answers for "
                 "the SFT model to get wrong, so there is nothing to mine. Set dpo.enabled: false, or give your own "
                 "pairs in data.preference with dpo.mine_mistakes: false")]
    mining = v.counts.get("split_mining", 0) if v.dpo.mine_mistakes else 0
    user = v.counts.get("pairs_used", 0)
    if mining + user >= 2:
        return []
    if not v.dpo.mine_mistakes:
        source = "dpo.mine_mistakes is false"
    elif cfg.mining_rows < 2:
        source = f"data.mining_rows={cfg.mining_rows}: raise it"
    elif "mining_held_out" in v.counts:
        source = (f"only {mining} training rows were left after validation to hold out for mining "
                  f"(data.mining_rows={cfg.mining_rows}): the training file needs more usable rows")
    else:
        source = (f"the mining split has {mining} rows although data.mining_rows={cfg.mining_rows}: the training "
                  "sample took the other rows, so lower data.rows_per_label or data.train_rows")
    user_text = (f"data.preference gave {user} usable pairs ({v.counts.get('pairs_rejected', 0)} rejected)"
                 if cfg.preference else "data.preference is not set")
    return [(f"dpo.enabled but the data can give DPO at most {mining + user} preference pairs (it needs 2): "
             f"{source}; {user_text}. Or set dpo.enabled: false")]
