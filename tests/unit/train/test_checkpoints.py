"""Checkpoints a re-run may resume from, and the keys they live under.

A checkpoint counts only with every file the Trainer reads to resume exactly, each whole; mirror copies go
through a temp dir; the SFT and DPO keys change with everything that changes the result (base, parent SFT
result, data, config, training code). The real kill-and-resume run is tests/integration/test_resume.py.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tuneline.config import DPOConfig, SFTConfig
from tuneline.model.base import BaseModelRef
from tuneline.sources import module_files
from tuneline.train import checkpoints, dpo, sft
from tuneline.train.checkpoints import (
    CHECKPOINT_FILES,
    DirMirror,
    checkpoint_complete,
    code_version,
    last_checkpoint,
    resume_point,
)

REQUIRED = (*CHECKPOINT_FILES, "adapter_model.safetensors")


def write_checkpoint(run: Path, step: int, weights: str = "adapter_model.safetensors") -> Path:
    """A checkpoint dir with the files the Trainer writes, in their real formats (small)."""
    d = run / f"checkpoint-{step}"
    d.mkdir(parents=True)
    torch.save({"state": {0: {"step": torch.tensor(float(step))}}}, d / "optimizer.pt")
    torch.save({"last_epoch": step}, d / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, d / "rng_state.pth")
    if weights:
        save_file({"w": torch.full((64,), float(step))}, d / weights)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return d


def truncate(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(b"" if how == "empty" else data[: len(data) // 2])


@pytest.mark.parametrize("how", ["missing", "empty", "half"])
@pytest.mark.parametrize("name", REQUIRED)
def test_a_checkpoint_missing_or_cutting_short_any_file_is_skipped(tmp_path, name, how):
    run = tmp_path / "sft-x"
    write_checkpoint(run, 4)
    newest = write_checkpoint(run, 8)
    assert checkpoint_complete(newest) and last_checkpoint(run) == str(newest)
    truncate(newest / name, how)
    assert not checkpoint_complete(newest)
    assert last_checkpoint(run) == resume_point(run) == str(run / "checkpoint-4")
    shutil.rmtree(run / "checkpoint-4")
    assert last_checkpoint(run) is resume_point(run) is None  # nothing whole: train from scratch


def test_partial_checkpoint_is_skipped(tmp_path):
    """A kill during a save leaves a newer checkpoint dir without trainer_state.json: resume from the older."""
    run = tmp_path / "sft-x"
    write_checkpoint(run, 4)
    (write_checkpoint(run, 8) / "trainer_state.json").unlink()
    assert last_checkpoint(run) == str(run / "checkpoint-4")
    (run / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # torn write
    assert last_checkpoint(run) == str(run / "checkpoint-4")
    (run / "checkpoint-8" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))  # another step's
    assert last_checkpoint(run) == str(run / "checkpoint-4")
    assert last_checkpoint(tmp_path / "missing") is None


def test_full_model_weights_one_file_or_every_shard(tmp_path):
    whole = write_checkpoint(tmp_path / "full", 2, weights="model.safetensors")
    assert checkpoint_complete(whole)
    sharded = write_checkpoint(tmp_path / "sharded", 2, weights="")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    save_file({"a": torch.ones(8)}, sharded / shards["a"])
    assert not checkpoint_complete(sharded)  # the second shard is not there
    save_file({"b": torch.ones(8)}, sharded / shards["b"])
    assert checkpoint_complete(sharded)
    truncate(sharded / shards["b"], "half")
    assert not checkpoint_complete(sharded)


def _visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_dir_mirror_keeps_the_old_copy_until_the_new_one_is_whole(tmp_path, monkeypatch):
    run, mirror = tmp_path / "local" / "sft-x", DirMirror(tmp_path / "mirror")
    mirror.save("sft-x", write_checkpoint(run, 4), 4)
    newer = write_checkpoint(run, 8)
    real_copy = shutil.copytree

    def killed_copy(src, dst, **kw):  # the copy dies after the first file: a full disk, a killed pod
        Path(dst).mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(src) / "optimizer.pt", dst)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints.shutil, "copytree", killed_copy)
    with pytest.raises(OSError):
        mirror.save("sft-x", newer, 8)
    monkeypatch.setattr(checkpoints.shutil, "copytree", real_copy)
    assert _visible(mirror.root / "sft-x") == ["checkpoint-4"] and checkpoint_complete(
        mirror.root / "sft-x" / "checkpoint-4"
    )

    fresh = tmp_path / "new-machine" / "sft-x"  # a re-run elsewhere resumes from the mirror's whole copy
    assert resume_point(fresh, mirror) == str(fresh / "checkpoint-4")
    assert _visible(fresh) == ["checkpoint-4"]

    mirror.save("sft-x", newer, 8)
    assert _visible(mirror.root / "sft-x") == ["checkpoint-8"] and checkpoint_complete(
        mirror.root / "sft-x" / "checkpoint-8"
    )


def test_restore_replaces_a_partial_local_checkpoint(tmp_path):
    mirror = DirMirror(tmp_path / "mirror")
    mirror.save("sft-x", write_checkpoint(tmp_path / "elsewhere" / "sft-x", 8), 8)
    local = tmp_path / "local" / "sft-x"
    truncate(write_checkpoint(local, 8) / "rng_state.pth", "empty")
    assert resume_point(local, mirror) == str(local / "checkpoint-8")
    assert checkpoint_complete(local / "checkpoint-8") and not any(p.name.startswith(".") for p in local.iterdir())


def test_artifact_mirror_falls_back_to_an_older_complete_version(tmp_path, monkeypatch):
    import steps._checkpoints as artifact_mirror
    from tuneline.artifacts import CheckpointDir

    stored = tmp_path / "store"
    bad, good = write_checkpoint(stored / "v2", 8), write_checkpoint(stored / "v1", 4)
    truncate(bad / "optimizer.pt", "half")
    versions = [
        SimpleNamespace(load=lambda d=d, s=s: CheckpointDir(path=str(d), step=s, name="sft-x"))
        for d, s in ((bad, 8), (good, 4))
    ]  # newest first

    class FakeClient:
        def list_artifact_versions(self, artifact, sort_by, size):
            assert artifact == "checkpoint-sft-x" and sort_by == "desc:created"
            return SimpleNamespace(items=versions[:size])

    monkeypatch.setattr(artifact_mirror, "Client", FakeClient)
    local = tmp_path / "local" / "sft-x"
    assert resume_point(local, artifact_mirror.ArtifactMirror()) == str(local / "checkpoint-4")
    assert _visible(local) == ["checkpoint-4"]
    versions[:] = []
    assert artifact_mirror.ArtifactMirror().restore("sft-x", tmp_path / "empty") is None


# --- the keys ------------------------------------------------------------------------------------------

REF = BaseModelRef(source="tiny", path="/nowhere", sha256="b" * 64)
ROWS = [{"id": "r0", "user": "I lost my card", "assistant": "lost_or_stolen_card"}]
PREFS = [
    {"id": "p0", "prompt": json.dumps([{"role": "user", "content": "Say hi"}]), "chosen": "Hi!", "rejected": "No."}
]
PAIRS = dpo.user_pairs(PREFS)


def _adapter(path: Path, value: float) -> str:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"lora_B": torch.full((4, 4), value)}, path / "adapter_model.safetensors")
    return str(path)


def _dpo_key(sft_dir: str, **change) -> str:
    args = {
        "ref": REF,
        "sft_dir": sft_dir,
        "sft_method": "lora",
        "cfg": DPOConfig(mine_mistakes=False),
        "mining_records": ROWS,
        "pref_rows": PREFS,
        "train_pairs": PAIRS,
    } | change
    return dpo.checkpoint_key(**args)


def test_dpo_key_changes_with_only_the_sft_adapter(tmp_path):
    """Same base, pairs, config and code: a re-trained SFT adapter must not resume the old DPO checkpoint."""
    first, same = _adapter(tmp_path / "sft-a", 0.5), _adapter(tmp_path / "sft-a-copy", 0.5)
    retrained = _adapter(tmp_path / "sft-b", 0.25)
    assert _dpo_key(first) == _dpo_key(same)  # where it lives does not matter, what it holds does
    assert _dpo_key(first) != _dpo_key(retrained)
    (Path(same) / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    assert _dpo_key(first) != _dpo_key(same)


def test_dpo_key_changes_with_base_data_and_config(tmp_path):
    sft_dir = _adapter(tmp_path / "sft", 0.5)
    keys = {
        _dpo_key(sft_dir),
        _dpo_key(sft_dir, ref=REF.model_copy(update={"sha256": "c" * 64})),
        _dpo_key(sft_dir, cfg=DPOConfig(mine_mistakes=False, beta=0.2)),
        _dpo_key(sft_dir, mining_records=ROWS * 2),
        _dpo_key(sft_dir, pref_rows=PREFS * 2),
        _dpo_key(sft_dir, train_pairs=PAIRS * 2),
        _dpo_key(sft_dir, sft_method="dora"),
    }
    assert len(keys) == 7


def test_sft_key_changes_with_base_data_and_config():
    cfg = SFTConfig(max_steps=3)
    keys = {
        sft.checkpoint_key(REF, cfg, ROWS),
        sft.checkpoint_key(REF.model_copy(update={"sha256": "c" * 64}), cfg, ROWS),
        sft.checkpoint_key(REF, SFTConfig(max_steps=4), ROWS),
        sft.checkpoint_key(REF, cfg, ROWS * 2),
        sft.checkpoint_key(REF, cfg, ROWS, max_tokens=256),
        sft.checkpoint_key(REF, cfg, ROWS, held=ROWS),
    }
    assert len(keys) == 6
    assert sft.checkpoint_key(REF, cfg, ROWS) == sft.checkpoint_key(REF, SFTConfig(max_steps=3), list(ROWS))


def test_code_version_follows_the_training_modules_imports(tmp_path, monkeypatch):
    sources = module_files("tuneline.train.dpo")
    assert {
        "tuneline.train.dpo",
        "tuneline.train.checkpoints",
        "tuneline.train.args",
        "tuneline.train.methods",
        "tuneline.eval.task",
        "tuneline.data.records",
        "tuneline.config",
    } <= set(sources)
    assert "tuneline.train.plan" in module_files("tuneline.train.sft")  # imported inside a function
    assert "tuneline.export.merge" not in sources and "tuneline.cli" not in sources

    package = tmp_path / "tuneline"
    shutil.copytree(checkpoints.PROJECT_ROOT / "tuneline", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(checkpoints, "PROJECT_ROOT", tmp_path)
    before = code_version.__wrapped__("tuneline.train.dpo")
    assert before == code_version("tuneline.train.dpo")
    precision = package / "model" / "precision.py"  # dpo.py reaches it only through train/args.py
    precision.write_text(precision.read_text() + "\n# a change\n")
    assert code_version.__wrapped__("tuneline.train.dpo") != before
    (package / "export" / "merge.py").write_text("# not imported by training\n")
    precision.write_text(precision.read_text().removesuffix("\n# a change\n"))
    assert code_version.__wrapped__("tuneline.train.dpo") == before
