"""Multi-task data (data.tasks): the config refuses what a mix cannot be, and the mix honours the weights and the
seed, tags every row with its task, metric and length, and accounts for every input row.

    .venv/bin/pytest -q tests/unit/data/test_task_mix.py
"""

import json
import random

import pytest

from tuneline.config import ConfigError, DataConfig, DPOData, load
from tuneline.data.tasks import mix_sizes, task_config
from tuneline.data.validate import validate

WORDS = ("apple", "river", "stone", "cloud", "bread", "music", "paper", "green", "quick", "silver", "orange", "window",
         "garden", "yellow", "pencil", "market", "candle", "forest", "planet", "rocket", "violin", "turtle", "basket",
         "winter", "summer")
SHARED = {"checks": {"contamination_benchmarks": [], "near_duplicate": "report"}, "mining_rows": 0}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mix")
    (d / "labels.json").write_text(json.dumps(["a", "b"]))
    rows = [f"{' '.join(random.Random(i).sample(WORDS, 7))},{'ab'[i % 2]}" for i in range(40)]
    (d / "intent.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    gen = [{"instruction": " ".join(random.Random(100 + i).sample(WORDS, 9)), "output": f"answer {i} is {WORDS[i % 25]}"}
           for i in range(30)]
    (d / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    return {"labels": str(d / "labels.json"), "intent": str(d / "intent.csv"), "gen": str(d / "gen.jsonl")}


def _tasks(files, w_intent=3.0, w_gen=1.0) -> list[dict]:
    return [{"name": "intent", "train_file": files["intent"], "labels_file": files["labels"], "eval_rows": 6,
             "prompt_template": "Intent: {text}", "metric": "exact_match", "weight": w_intent},
            {"name": "gen", "train_file": files["gen"], "shape": "alpaca", "eval_rows": 5, "metric": "token_f1",
             "max_new_tokens": 7, "weight": w_gen}]


def _cfg(files, **changes) -> DataConfig:
    return DataConfig(**({**SHARED, "tasks": _tasks(files)} | changes))


def _run_yaml(tmp_path, data: dict, **sections) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"parameters": {"config": {"data": data, "dpo": {"enabled": False}, **sections}}}))
    return str(path)


@pytest.mark.parametrize(("change", "said"), [
    ({"shape": "text"}, ["task 'gen'", "shape text / metric perplexity", "own run"]),
    ({"metric": "perplexity"}, ["task 'gen'", "cannot be one task of a mix"]),
    ({"weight": 0}, ["task 'gen'", "weight=0", "must be > 0"]),
    ({"weight": -1.5}, ["weight=-1.5", "remove the task"]),
    ({"lables_file": "x.json"}, ["unknown key 'lables_file'", "'x.json'", "did you mean 'labels_file'?"]),
    ({"train_rows": 5, "rows_per_label": 2}, ["task 'gen'", "train_rows=5 and rows_per_label=2", "set one"]),
])
def test_the_config_refuses_what_a_mix_cannot_hold(tmp_path, files, change, said):
    tasks = _tasks(files)
    tasks[1] |= change
    with pytest.raises(ConfigError) as err:
        load(_run_yaml(tmp_path, {"tasks": tasks}))
    assert "data.tasks" in str(err.value) and all(s in str(err.value) for s in said), str(err.value)


@pytest.mark.parametrize(("data", "sections", "said"), [
    # A top-level key at its default is not "set": a step sees the config as a JSON dump, every key written out.
    ({"train_file": "data/alpaca/alpaca_5000.json"}, {}, ["data.train_file set beside data.tasks", "data.tasks[].train_file"]),
    ({}, {"evaluate": {"metric": "token_f1"}}, ["evaluate.metric=token_f1 is not used", "data.tasks[].metric"]),
    ({"tasks": []}, {}, ["data.tasks is empty"]),
])
def test_top_level_task_keys_beside_tasks_are_refused(tmp_path, files, data, sections, said):
    with pytest.raises(ConfigError) as err:
        load(_run_yaml(tmp_path, {"tasks": _tasks(files)} | data, **sections))
    assert all(s in str(err.value) for s in said), str(err.value)


def test_a_task_takes_the_shared_keys_and_the_top_level_defaults(files):
    cfg = _cfg(files, max_tokens=77, eval_rows=9, mining_rows=10)
    intent, gen = (task_config(cfg, t, share) for t, share in zip(cfg.tasks, (0.75, 0.25)))
    assert (intent.train_file, intent.labels_file, intent.max_tokens, intent.rows_per_label) == \
        (files["intent"], files["labels"], 77, None)
    assert (intent.eval_rows, gen.eval_rows) == (6, 5)  # set in the task: the task's
    assert (intent.mining_rows, gen.mining_rows) == (8, 2)  # shared out by weight (round(10 * share))
    assert gen.labels_file is None and gen.max_new_tokens == 7 and intent.max_new_tokens == "auto"


def test_mix_sizes_keep_the_shares_and_never_repeat_a_row():
    assert mix_sizes({"a": 100, "b": 100}, {"a": 3, "b": 1}) == {"a": 100, "b": 33}
    assert mix_sizes({"a": 30, "b": 100}, {"a": 1, "b": 1}) == {"a": 30, "b": 30}
    assert mix_sizes({"a": 0, "b": 10}, {"a": 1, "b": 1}) == {"a": 0, "b": 0}


@pytest.fixture(scope="module")
def mixed(files, tiny_tok):
    return validate(_cfg(files), tiny_tok, dpo=DPOData())


def test_the_mix_honours_the_weights_and_tags_every_row(mixed):
    t = mixed.task
    train = t[t.split == "train"]
    n = train.groupby("task").size().to_dict()
    assert n == {"intent": 34, "gen": 11}, n  # intent offers 34 rows (40 - 6 eval): at 3:1, gen gets round(34 / 3)
    assert t.groupby(["task", "split"]).size().to_dict()[("gen", "eval")] == 5
    assert set(t.metric[t.task == "intent"]) == {"exact_match"} and set(t.metric[t.task == "gen"]) == {"token_f1"}
    assert set(t.max_new_tokens[t.task == "gen"]) == {7}  # the task's own length; intent's from its labels
    assert t.id.str.startswith(tuple(f"{x}:" for x in ("intent", "gen"))).all() and t.id.is_unique
    c = mixed.counts
    assert c["accepted"] + c["dropped"] + c["unused"] == c["input_rows"] == 70, c
    assert c["tasks"]["intent"]["share"] == 0.75 and c["tasks"]["gen"]["train"] == 11
    assert c["shape"] == "multi-task" and not mixed.gate_failures


def test_the_mix_is_seeded(files, tiny_tok, mixed):
    again = validate(_cfg(files), tiny_tok, dpo=DPOData())
    other = validate(_cfg(files, seed=1), tiny_tok, dpo=DPOData())
    ids = list(mixed.task.id)
    assert list(again.task.id) == ids and set(other.task.id) != set(ids)


def test_a_task_that_fails_its_gate_is_named(files, tiny_tok):
    tasks = _tasks(files)
    tasks[1] |= {"train_rows": 500}
    v = validate(DataConfig(**SHARED, tasks=tasks), tiny_tok, dpo=DPOData())
    assert any(f.startswith("task 'gen': data.train_rows=500") for f in v.gate_failures), v.gate_failures


def test_a_mix_reads_the_same_after_the_json_round_trip_a_step_makes(files):
    """ZenML stores a step's parameters as JSON and validates them again in the step: every key reads as set
    there, so what a task inherits must not depend on which keys the YAML wrote."""
    from tuneline.config import TunelineConfig

    cfg = TunelineConfig(data=_cfg(files, max_tokens=77, eval_rows=9, mining_rows=10))
    again = TunelineConfig.model_validate_json(cfg.model_dump_json())
    for spec, spec_again in zip(cfg.data.tasks, again.data.tasks):
        assert task_config(cfg.data, spec) == task_config(again.data, spec_again)
