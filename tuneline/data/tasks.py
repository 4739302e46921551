"""Multi-task data (data.tasks): each task read through the single-task path, then mixed into one SFT set by weight.

    tuneline validate configs/examples/multi-task.yaml     # the data report has a per-task table
    v = validate(cfg.data, tokenizer)                      # tuneline.data.validate dispatches here when tasks are set

Each task gets its own DataConfig (`task_config`: the top-level data section, with the task's keys), and is
read, checked, split and given its generation length exactly as a single-task run would be (`checked`).
Then the mix:
- every row is tagged with its task, the task's metric and its resolved max_new_tokens (TASK_MIX_COLUMNS), and
  its id is prefixed '<task>:', so the evaluation, DPO mining and the export gate score each row by its task
  without knowing about tasks (tuneline.eval.task);
- the weights decide each task's share of the training rows: the mix is the largest set with exactly those
  shares in which no row repeats (`mix_sizes`), each task's rows sampled (data.seed, spread over labels) from
  what its own sample (rows_per_label / train_rows) left; the rest count as unused. Eval and mining rows are
  kept whole: the overall score is the mean over all eval rows, each task also scored on its own;
- data.mining_rows is shared out by weight; data.general_mix and data.preference apply once, to the mix;
- the gate runs per task (its failures name the task) and DPO's pairs are checked on the mix.
Snapshot copies are looked up under 'tasks.<name>.<key>' (e.g. tasks.intent.train_file); without one the
configured file is read.
"""

from __future__ import annotations

import random

import pandas as pd
from pydantic import ValidationError

from tuneline.config import TASK_KEYS, DataConfig, DPOData, TaskSpec, is_set
from tuneline.data.checks import Ledger
from tuneline.data.generation import carry
from tuneline.data.readers import DataError
from tuneline.data.records import PREF_COLUMNS, REJECT_COLUMNS, TASK_MIX_COLUMNS, to_record
from tuneline.data.sources import locate
from tuneline.data.splits import balance_stats, general_mix, preference_pairs, stratified
from tuneline.data.validate import Validated, _counts, checked, data_failures, dpo_failures

# Task keys a task leaves at their default take the top-level data section's value, where that is not its default.
INHERITED = ("rows_per_label", "train_rows", "eval_rows", "prompt_template", "system_prompt", "max_new_tokens")
SAMPLE_KEYS = {"rows_per_label", "train_rows"}  # set together: a task's sample is the task's own choice
COPY_KEYS = ("train_file", "test_file", "labels_file")


def shares(tasks: list[TaskSpec]) -> dict[str, float]:
    """Each task's share of the training rows: weight / sum of the weights."""
    total = sum(t.weight for t in tasks)
    return {t.name: t.weight / total for t in tasks}


def task_config(data: DataConfig, spec: TaskSpec, share: float = 1.0) -> DataConfig:
    """The single-task DataConfig of one task: the shared data keys, the task's own, and its share of mining_rows."""
    shared = data.model_dump(exclude={"tasks", "general_mix", "preference", *TASK_KEYS})
    own = {k: getattr(spec, k) for k in TASK_KEYS}
    for key in INHERITED:
        if not is_set(spec, key) and is_set(data, key):
            own[key] = getattr(data, key)
    if any(is_set(spec, key) for key in SAMPLE_KEYS):
        own.update({k: getattr(spec, k) for k in SAMPLE_KEYS})
    try:
        return DataConfig.model_validate({**shared, **own, "mining_rows": round(data.mining_rows * share)})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise ValueError(f"data.tasks task '{spec.name}': {problems}") from None


def mix_sizes(available: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Training rows per task: the largest mix in which each task has its share and no row repeats.

    The task with the fewest rows for its share sets the size N = min(available / share); each task then
    gets round(share * N) of its rows (never more than it has)."""
    share = {k: w / sum(weights.values()) for k, w in weights.items()}
    n = min(available[k] / share[k] for k in share)
    return {k: min(available[k], round(share[k] * n)) for k in share}


def _copies(copies: dict[str, str], name: str) -> dict[str, str]:
    """The snapshot copies of one task's files, under the single-task keys."""
    return {k: copies[f"tasks.{name}.{k}"] for k in COPY_KEYS if f"tasks.{name}.{k}" in copies}


def _read(cfg: DataConfig, spec: TaskSpec, tcfg: DataConfig, tokenizer, mmlu_subjects, copies, dpo) -> Validated:
    try:
        v = checked(tcfg, tokenizer, mmlu_subjects, _copies(copies, spec.name), dpo)
    except DataError as err:
        raise DataError(f"data.tasks task '{spec.name}': {err} (the task's keys are under data.tasks, e.g. "
                        f"data.tasks[].train_file)") from None
    if v.counts["shape"] in ("text", "preference", "hh_preference"):
        raise DataError(f"data.tasks task '{spec.name}': {spec.train_file} holds {v.counts['shape']} rows; a task "
                        "of a mix needs prompts with answers (alpaca, messages, prompt_completion, classification). "
                        "Set the task's shape, or train raw text / preference pairs in their own run")
    return v


def _tag(v: Validated, spec: TaskSpec, keep_train: set[str]) -> pd.DataFrame:
    """The task's rows of the mix: its sampled training rows, all its mining and eval rows, tagged."""
    t = v.task
    t = t[(t["split"] != "train") | t["id"].isin(keep_train)].copy()
    t["id"] = spec.name + ":" + t["id"]
    t["task"], t["metric"], t["max_new_tokens"] = spec.name, spec.metric, v.generation.tokens
    return t


def _merge_checks(parts: list[dict]) -> dict:
    """Each check's flagged rows summed over the tasks (the policy is the shared data.checks one)."""
    out: dict = {}
    for checks in parts:
        for key, c in checks.items():
            mine = out.setdefault(key, {**c, "flagged": 0})
            mine["flagged"] += c.get("flagged", 0)
            if "truncated" in c:
                mine["truncated"] = mine.get("truncated", 0) + c["truncated"]
    return out


def validate_tasks(cfg: DataConfig, tokenizer, mmlu_subjects: list[str] | None = None,
                   copies: dict[str, str] | None = None, dpo: DPOData | None = None) -> Validated:
    """data.tasks read task by task, mixed by weight, with every input row accounted for (see the module doc)."""
    copies, share = copies or {}, shares(cfg.tasks)
    parts = {t.name: _read(cfg, t, task_config(cfg, t, share[t.name]), tokenizer, mmlu_subjects, copies, dpo)
             for t in cfg.tasks}
    trains = {name: v.task[v.task["split"] == "train"] for name, v in parts.items()}
    sizes = mix_sizes({n: len(t) for n, t in trains.items()}, {t.name: t.weight for t in cfg.tasks})
    rng = random.Random(cfg.seed)
    frames, failures, per_task, unused, upsampled = [], [], {}, 0, 0
    for spec in cfg.tasks:
        v, train = parts[spec.name], trains[spec.name]
        taken, left = stratified(train.to_dict("records"), None, sizes[spec.name], rng)
        keep = {r["id"] for r in taken}
        frames.append(_tag(v, spec, keep))
        copy = [bool("#" in r["id"]) for r in left]  # upsampled repeats (data.balance) are not input rows
        unused += v.counts["unused"] + copy.count(False)
        upsampled += sum("#" in r["id"] for r in taken)
        failures += [f"task '{spec.name}': {f}" for f in data_failures(v, task_config(cfg, spec, share[spec.name]))]
        per_task[spec.name] = {"metric": spec.metric, "weight": spec.weight, "share": round(share[spec.name], 4),
                               "shape": v.counts["shape"], "input_rows": v.counts["input_rows"],
                               "train_available": len(train), "train": len(taken), "mining": v.counts.get("split_mining", 0),
                               "eval": v.counts.get("split_eval", 0), "dropped": v.counts["dropped"],
                               "max_new_tokens": v.generation.tokens, "max_new_tokens_why": v.generation.reason()}
    task = pd.concat(frames, ignore_index=True)
    n_train = int((task["split"] == "train").sum())
    mix, mix_stats = [], {}
    if cfg.general_mix:
        mix, mix_stats = general_mix(cfg, locate(cfg.general_mix.file, copies.get("general_mix.file")), n_train,
                                     tokenizer, rng)
        task = pd.concat([task, pd.DataFrame([to_record(r, "train") for r in mix])], ignore_index=True)
    ledger, pref_stats, pairs = Ledger(), {}, []
    if cfg.preference:
        pairs, pref_stats = preference_pairs(cfg.preference, cfg, locate(cfg.preference.file,
                                                                         copies.get("preference.file")), ledger)
    task_rejected = pd.concat([v.rejected for v in parts.values()], ignore_index=True)
    rejected = pd.concat([task_rejected, pd.DataFrame(ledger.rows, columns=REJECT_COLUMNS)], ignore_index=True)
    longest = max((v.generation for v in parts.values()), key=lambda g: g.tokens)
    carry(task, longest)  # the default for a row without its own length (the general mix never generates)
    extra = {**pref_stats, "max_new_tokens": longest.tokens,
             "max_new_tokens_why": "per task (see tasks); the longest: " + longest.reason(), "tasks": per_task}
    if held := sum(v.counts.get("mining_held_out", 0) for v in parts.values()):
        extra["mining_held_out"] = held
    labels = [None] * sum(v.counts["labels"] for v in parts.values())
    counts = _counts(task, task_rejected, rejected, sum(v.counts["input_rows"] for v in parts.values()), unused,
                     labels, "multi-task", extra, upsampled, len(mix))
    train_rows = task[task["split"] == "train"].to_dict("records")
    out = Validated(task=task, preferences=pd.DataFrame(pairs, columns=PREF_COLUMNS), rejected=rejected,
                    counts=counts | mix_stats, checks=_merge_checks([v.checks for v in parts.values()]),
                    balance={"train": balance_stats(train_rows)},
                    gx=[{**g, "source": f"{n}/{g['source']}"} for n, v in parts.items() for g in v.gx],
                    dpo=dpo, generation=longest)
    out.gate_failures = failures + dpo_failures(out, cfg)
    return out


__all__ = ["INHERITED", "TASK_MIX_COLUMNS", "mix_sizes", "shares", "task_config", "validate_tasks"]
