"""A training step that dies mid-run is retried by ZenML within the same pipeline run and resumes from its
checkpoint: no second command.

The pipeline here is the real data and SFT steps of pipelines/finetune.py (`train_sft` with the retry policy
finetune sets, RETRY), run in-process on the local orchestrator against the session's fresh store, so the
fault can be injected without a hook in the product: a callback appended to SFT's callbacks raises once,
right after the first checkpoint is on disk (what an OOM kill or a lost node does to a step, minus the
process). ZenML's local orchestrator retries a step that raised (zenml.execution.step.utils.launch_step);
a SIGKILL there kills the orchestrator itself, so a killed process is retried only by orchestrators that
run steps as their own processes (the Kubernetes one: the step Job's backoffLimit is max_retries).
"""

import pytest
from transformers import TrainerCallback
from zenml import pipeline
from zenml.client import Client

import steps._process as steps_process
from pipelines.finetune import RETRY
from pipelines.finetune import train_sft as retried_train_sft
from steps.prepare_base import prepare_base
from steps.snapshot_data import snapshot_data
from steps.validate_data import validate_data
from tuneline.config import load
from tuneline.data.snapshot import fingerprint
from tuneline.paths import PROJECT_ROOT
from tuneline.train import checkpoints, sft


class DieAfterFirstCheckpoint(TrainerCallback):
    def __init__(self):
        self.fired_at = None

    def on_save(self, args, state, control, **kwargs):
        if self.fired_at is None:
            self.fired_at = state.global_step
            raise RuntimeError(f"injected fault after the checkpoint of step {state.global_step}")


@pipeline(enable_cache=False)
def sft_with_retries(config):
    base = prepare_base(config.base_model, config.data.chat_template)
    raw, _general_text = snapshot_data(config.data, fingerprint(config.data))
    task_data, *_ = validate_data(base, raw, config.data, None, config.dpo.data_use())
    retried_train_sft(base, task_data, config.sft, config.data.max_tokens, checkpoint_artifacts=False)


@pytest.fixture()
def fault(tmp_path, monkeypatch):
    # In this process, where the fault is patched in: without a mirror the local orchestrator would train in a
    # fresh process (steps/_process.py), which imports the unpatched code.
    monkeypatch.setattr(steps_process, "call_in_fresh_process", lambda fn, *args, **kwargs: fn(*args, **kwargs))
    monkeypatch.setattr(checkpoints, "CHECKPOINT_ROOT", tmp_path / "ckpt")
    monkeypatch.setattr(checkpoints, "SAVE_STEPS", 2)
    die = DieAfterFirstCheckpoint()
    real = sft.mirror_callbacks
    monkeypatch.setattr(sft, "mirror_callbacks", lambda ckpt, mirror: real(ckpt, mirror) + [die])
    return die


def test_train_sft_dies_after_a_checkpoint_and_the_same_run_resumes_it(fault):
    assert retried_train_sft.configuration.retry == RETRY and RETRY.max_retries >= 1
    cfg = load(PROJECT_ROOT / "configs" / "tiny.yaml",
               ["sft.max_steps=5", "sft.eval_steps=null", "dpo.enabled=false"])
    run = sft_with_retries(cfg)
    run = Client().get_pipeline_run(run.id)
    assert str(run.status).endswith("completed"), run.status
    assert fault.fired_at == 2, "the fault fired after the first checkpoint"
    step = run.steps["train_sft"]
    meta = step.run_metadata
    assert meta["steps"] == 5 and str(meta["resumed_from"]).endswith("checkpoint-2"), dict(meta)


def test_train_sft_trains_in_a_fresh_process_and_its_output_reaches_the_steps_logs(tmp_path, monkeypatch, capsys):
    """Under the local orchestrator, without a checkpoint mirror, SFT runs in a process of its own
    (tuneline/fresh_process.py): it reads its checkpoint dir from the environment, not from this process's
    patched module, and what it prints comes through this process's streams, which ZenML's step logs capture."""
    monkeypatch.setattr(checkpoints, "CHECKPOINT_ROOT", tmp_path / "in-this-process")
    monkeypatch.setenv("TUNELINE_CHECKPOINTS", str(tmp_path / "in-the-child"))
    monkeypatch.setenv("TUNELINE_SAVE_STEPS", "1")
    cfg = load(PROJECT_ROOT / "configs" / "tiny.yaml", ["sft.max_steps=2", "sft.eval_steps=null", "dpo.enabled=false"])
    run = Client().get_pipeline_run(sft_with_retries(cfg).id)
    assert str(run.status).endswith("completed"), run.status
    assert run.steps["train_sft"].run_metadata["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "in-the-child").glob("sft-*/checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "in-this-process").exists()
    out, err = capsys.readouterr()
    assert "Tokenizing train dataset" in out + err  # TRL's progress, printed by the child
