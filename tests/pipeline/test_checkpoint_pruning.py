"""Checkpoint artifacts are pruned to the newest `keep_checkpoints` versions, files and records, and a restore
still finds the newest whole one.

    .venv/bin/pytest -q tests/pipeline/test_checkpoint_pruning.py       # a few seconds: no training

A real one-step ZenML pipeline on the session's fresh local store (tests/conftest.py) saves four checkpoints
through the same ArtifactMirror the training steps use, inside the step, so every version is the step's output
as in a training run (the case ZenML's Client.delete_artifact_version refuses).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from zenml import pipeline, step
from zenml.client import Client

from steps._checkpoints import ArtifactMirror, mirror
from tuneline.train.checkpoints import checkpoint_complete

NAME = "sft-pruned"


def write_checkpoint(run: Path, step: int) -> Path:
    """A checkpoint dir with the files the Trainer writes, in their real formats (small)."""
    d = run / f"checkpoint-{step}"
    d.mkdir(parents=True)
    torch.save({"state": {}}, d / "optimizer.pt")
    torch.save({"last_epoch": step}, d / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, d / "rng_state.pth")
    save_file({"w": torch.full((8,), float(step))}, d / "adapter_model.safetensors")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return d


@step(enable_cache=False)
def save_four_checkpoints(run_dir: str) -> int:
    saver = ArtifactMirror(keep=2)
    for n in (1, 2, 3, 4):
        saver.save(NAME, write_checkpoint(Path(run_dir), n), n)
    return 4


@pipeline(enable_cache=False)
def checkpointing(run_dir: str):
    save_four_checkpoints(run_dir)


def test_only_the_newest_two_checkpoint_versions_stay(tmp_path):
    checkpointing(str(tmp_path / "run"))
    versions = Client().list_artifact_versions(artifact=f"checkpoint-{NAME}", sort_by="desc:created").items
    assert [v.run_metadata["global_step"] for v in versions] == [4, 3]
    stores = [Path(v.uri) for v in versions]
    parent = stores[0].parent  # every version of the artifact is a dir beside the others
    assert sorted(os.listdir(parent)) == sorted(p.name for p in stores), "the older versions' files are deleted"
    restored = ArtifactMirror().restore(NAME, tmp_path / "elsewhere")
    assert restored is not None and restored.name == "checkpoint-4" and checkpoint_complete(restored)


def test_keep_below_one_is_refused():
    with pytest.raises(ValueError, match="keep_checkpoints is 0: keep at least 1"):
        mirror(True, keep=0)
