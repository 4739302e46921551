"""Every worked config in configs/examples/ runs through the whole ZenML pipeline on the tiny model: the same
file a user copies, shrunk to the tiny model and a few rows, not a config written for the test.

    .venv/bin/pytest -q tests/pipeline/test_task_kinds.py

Each example keeps its kind's settings (shape, columns, prompt template, metric, DPO mode, tasks); the shrink
swaps the base model, cuts each data file to its first rows and turns off what tests/pipeline/test_pipeline.py
already covers for the default (benchmarks, GPTQ/AWQ, the extra GGUF types). One ZenML store, in-process runs.
"""

import json
from pathlib import Path

import pytest
import yaml
from zenml.client import Client

from pipelines.finetune import finetune
from tuneline.config import RL_LOSSES, DataConfig, load
from tuneline.train import checkpoints
from tuneline.paths import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "configs" / "examples"
KINDS = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
HEAD_ROWS = 60  # rows (or text lines) kept of each data file: enough for train, eval and mining splits

TINY = {
    "base_model": {"source": "tiny", "tiny": {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128}},
    "sft": {"max_steps": 2, "batch_size": 4, "eval_steps": None},
    "dpo": {"max_steps": 2, "batch_size": 2},
    "evaluate": {"batch_size": 8, "mmlu": None, "gsm8k": None, "perplexity": {"rows": 4, "min_words": 5}},
    "export": {"gguf_types": ["f16"], "benchmarks": False},
    "quantize": {"methods": []},
}
# Row counts of the data section (and of each of data.tasks), where the example sets them.
ROWS = {"train_rows": 16, "eval_rows": 6, "mining_rows": 6, "rows_per_label": 1}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _head(src: Path, dst: Path) -> None:
    """The first HEAD_ROWS records of a data file, in its own format."""
    if src.suffix == ".json":
        dst.write_text(json.dumps(json.loads(src.read_text())[:HEAD_ROWS]))
    elif src.suffix in (".jsonl", ".csv"):  # a CSV keeps its header line
        dst.write_text("".join(src.read_text().splitlines(keepends=True)[:HEAD_ROWS + 1]))
    else:  # raw text: blank-line-separated documents
        dst.write_text("".join(src.read_text().splitlines(keepends=True)[:HEAD_ROWS * 4]))


def _shrink_data(data: dict, tmp: Path) -> None:
    for key in ("train_file", "test_file"):
        if data.get(key):
            src = PROJECT_ROOT / data[key]
            data[key] = str(tmp / f"{len(list(tmp.iterdir()))}-{src.name}")
            _head(src, Path(data[key]))
    for key, n in ROWS.items():
        if data.get(key):
            data[key] = min(data[key], n)
    if data.get("shape") != "text":
        data["max_new_tokens"] = 4  # the random model never stops early: keep its generations short
    if data.get("preference"):
        data["preference"]["rows"] = 6
    for task in data.get("tasks") or []:
        _shrink_data(task, tmp)


def _tiny(kind: str, tmp: Path) -> Path:
    raw = yaml.safe_load((EXAMPLES / f"{kind}.yaml").read_text())
    cfg = raw["parameters"]["config"]
    for section, values in TINY.items():
        if section == "dpo" and cfg.get("dpo", {}).get("enabled") is False:
            continue
        cfg.setdefault(section, {}).update(values)
    if cfg.get("dpo", {}).get("loss_type") in RL_LOSSES:  # dpo.batch_size counts answers: 2 per prompt here
        cfg["dpo"]["num_generations"] = 2
    data = cfg.setdefault("data", {})
    if not data.get("tasks"):  # an example that keeps the default's data (the RL ones) is shrunk like the others
        default = DataConfig().model_dump()
        data |= {k: default[k] for k in ("train_file", "test_file", *ROWS) if k not in data and default[k] is not None}
    _shrink_data(data, tmp)
    if cfg["data"].get("shape") == "text":
        cfg["data"]["max_tokens"] = 64  # the packing block, within the tiny model's positions
    out = tmp / f"{kind}.yaml"
    out.write_text(yaml.safe_dump(raw))
    load(out)  # the shrunk config is still a valid one
    return out


@pytest.fixture(scope="module", params=KINDS)
def run(request, tmp_path_factory):
    kind = request.param
    tmp = tmp_path_factory.mktemp(kind)
    # Fresh checkpoints: one left by an earlier session would be resumed from instead of training.
    # Patched for what trains in this process; in the environment for the fresh process (steps/_process.py).
    patch = request.getfixturevalue("monkeypatch_module")
    patch.setattr(checkpoints, "CHECKPOINT_ROOT", tmp / "ckpt")
    patch.setenv("TUNELINE_CHECKPOINTS", str(tmp / "ckpt"))
    pipeline_run = finetune.with_options(config_path=str(_tiny(kind, tmp)))()
    return kind, load(tmp / f"{kind}.yaml"), Client().get_pipeline_run(pipeline_run.id)


def test_every_step_of_the_kind_completes(run):
    kind, cfg, r = run
    statuses = {n: str(s.status).rsplit(".", 1)[-1] for n, s in r.steps.items()}
    # prepare_base is shared by every kind (the same tiny model): the first run makes it, the others reuse it.
    # The two RL examples share the default's data and SFT: the second reuses the first's train_sft, and trains
    # its own second stage.
    assert set(statuses.values()) <= {"completed", "cached"}, (kind, statuses)
    assert statuses["train_sft"] == "completed" or (cfg.dpo.loss_type in RL_LOSSES
                                                    and statuses["train_dpo"] == "completed"), (kind, statuses)
    assert ("train_dpo" in statuses) == cfg.dpo.enabled, (kind, statuses)
    final = r.steps["promote"].outputs["final_evaluation"][0].load()
    if cfg.data.tasks:  # each task scored on its own rows with its own metric, the mix on all of them
        assert final.task["base"].metric == "mixed", kind
        assert {(t.name, t.metric) for t in final.task["sft"].tasks} == {(t.name, t.metric) for t in cfg.data.tasks}
        assert all(t.n > 0 for t in final.task["sft"].tasks), final.task["sft"].tasks
    else:
        assert final.task["base"].metric == cfg.evaluate.metric, kind
    assert final.final == ("dpo" if cfg.dpo.enabled else "sft") and set(final.task) >= {"base", "sft", "merged"}
    gguf = r.steps["export_gguf"].outputs["gguf_export"][0].load()
    assert [f.candidate for f in gguf.files] == ["gguf-F16"], kind
    decision = r.steps["promote"].outputs["promotion"][0].load()
    assert decision.promote or decision.reasons, f"{kind}: a refusal must say why"


def test_dpo_learns_from_what_the_kind_offers(run):
    kind, cfg, r = run
    if not cfg.dpo.enabled:
        pytest.skip(f"{kind} trains no DPO stage (shape {cfg.data.shape})")
    meta = r.steps["train_dpo"].run_metadata
    if cfg.dpo.loss_type in RL_LOSSES:  # RL samples its own answers to the mining rows, scored by the reward
        assert meta["rl_prompts"] > 0 and meta["rl_reward"] == cfg.dpo.reward, f"{kind}: {meta}"
        if cfg.reward_model.enabled:  # RLHF: the reward model trained on the mined pairs, its accuracy held out
            rm = r.steps["train_reward"].run_metadata
            assert rm["pairs_mined"] > 0 and rm["pairs_heldout"] > 0, f"{kind}: {rm}"
            assert 0 <= rm["heldout_reward_accuracy"] <= 1, rm
        return
    mined, given = meta["pairs_mined"], meta["pairs_user"]
    if cfg.dpo.mine_mistakes:
        assert mined > 0, f"{kind}: mining found no pairs in {meta}"
    else:
        assert mined == 0 and given > 0, f"{kind}: DPO must train on the user's pairs alone: {meta}"
