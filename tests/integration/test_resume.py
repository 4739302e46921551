"""Checkpoints that survive: SIGKILL a training process mid-run, re-run the same command, and it
resumes exactly (global step, optimizer, scheduler, RNG), redoes no finished step, and ends with
the adapter an uninterrupted run makes. Same seed + data + config gives the same adapter.

The killed and the resumed run are subprocesses calling `tuneline.train.sft.train` on the tiny model
(8 optimizer steps of 4 rows, 4 per epoch, a checkpoint every 3 steps, LoRA dropout 0.1 so that the
RNG state matters, bf16 autocast where the CPU has it, as in real runs) with their own checkpoint
root (TUNELINE_CHECKPOINTS). The killed run sleeps 0.3 s per step so the test can kill it between
checkpoint-6 and the end; the sleep does not touch the numbers. The uninterrupted reference runs in
this process. Every run uses one torch thread, so all of them sum in the same order.

Tolerance: adapters are compared tensor by tensor with atol 1e-6, rtol 1e-5 (measured: bit-identical
on this CPU, resumed vs uninterrupted and run vs re-run; the margin only covers BLAS summation order).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tuneline.train.checkpoints as training
from tuneline.config import DataConfig, SFTConfig, resolve
from tuneline.data.records import to_record
from tuneline.data.sources import locate, read_source
from tuneline.paths import PROJECT_ROOT
from tuneline.train.checkpoints import checkpoint_complete, last_checkpoint
from tuneline.train.sft import train

CFG = SFTConfig(max_steps=8, batch_size=4, learning_rate=5e-3, dropout=0.1, logging_steps=1, seed=7)
ROWS = 16  # 4 steps per epoch: the kill lands in the second epoch, so data skipping is exercised too
SAVE_STEPS = 3
KILL_AT = 6
ATOL, RTOL = 1e-6, 1e-5

DRIVER = r'''
import json, os, sys, time
from pathlib import Path
from trl import SFTTrainer
from tuneline.model.base import BaseModelRef
from tuneline.config import SFTConfig
from tuneline.train.sft import train

job = json.loads(Path(sys.argv[1]).read_text())
delay, ran = float(os.environ.get("TUNELINE_TEST_STEP_DELAY", "0")), []
inner = SFTTrainer.training_step

def training_step(self, *args, **kwargs):  # counts the steps this process really computes
    ran.append(self.state.global_step + 1)
    time.sleep(delay)
    return inner(self, *args, **kwargs)

SFTTrainer.training_step = training_step
res = train(BaseModelRef(**job["ref"]), job["records"], SFTConfig(**job["cfg"]), Path(job["out"]))
print("RESULT " + json.dumps({"metrics": res.metrics, "ran": ran, "history": res.history,
                              "seed": res.seed, "data_hash": res.data_hash, "versions": res.versions}))
'''


def _job(tmp_path, ref, records, out: Path) -> list[str]:
    (tmp_path / "driver.py").write_text(DRIVER)
    spec = tmp_path / f"{out.name}.json"
    spec.write_text(json.dumps({"ref": ref.model_dump(), "records": records, "cfg": CFG.model_dump(), "out": str(out)},
                               default=str))
    return [sys.executable, str(tmp_path / "driver.py"), str(spec)]


def _env(root: Path, delay: float = 0.0) -> dict:
    return {**os.environ, "TUNELINE_CHECKPOINTS": str(root), "TUNELINE_SAVE_STEPS": str(SAVE_STEPS),
            "TUNELINE_TEST_STEP_DELAY": str(delay), "PYTHONPATH": str(PROJECT_ROOT), "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def _run(cmd, env) -> dict:
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def _assert_same_adapter(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """The first Banking77 training rows as task records (read directly: the full validation is not needed)."""
    cfg = DataConfig()
    recs = read_source(locate(str(resolve(cfg.train_file))), [], template=cfg.prompt_template,
                       system_prompt=cfg.system_prompt).records
    return [to_record(r, "train") for r in recs[:ROWS]]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_here(ref, records, root: Path, out: Path):
    """An uninterrupted in-process run with its own checkpoint root (so it never resumes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "CHECKPOINT_ROOT", root)
        mp.setattr(training, "SAVE_STEPS", SAVE_STEPS)
        return train(ref, records, CFG, out)


@pytest.fixture(scope="module")
def straight(tiny_ref, records, tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("straight")
    return _train_here(tiny_ref, records, tmp / "ckpt", tmp / "adapter")


def test_sigkill_mid_run_then_rerun_resumes_exactly(tiny_ref, records, tmp_path, straight):
    killed_root = tmp_path / "ckpt-killed"
    cmd = _job(tmp_path, tiny_ref, records, tmp_path / "resumed")

    # 1. Start, wait for a complete checkpoint-8, SIGKILL.
    proc = subprocess.Popen(cmd, env=_env(killed_root, delay=0.3), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(checkpoint_complete(c) for c in killed_root.glob(f"sft-*/checkpoint-{KILL_AT}")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    run_dir = next(killed_root.glob("sft-*"))
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists(), "the killed run must not have finished"

    # 2. What survived: step, optimizer, scheduler and RNG states of step 8.
    ckpt = Path(last_checkpoint(run_dir))
    assert ckpt.name == f"checkpoint-{KILL_AT}"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == KILL_AT and state["max_steps"] == CFG.max_steps
    opt = torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert opt["state"] and all(int(s["step"]) == KILL_AT for s in opt["state"].values())
    assert all("exp_avg" in s and "exp_avg_sq" in s for s in opt["state"].values())
    sched = torch.load(ckpt / "scheduler.pt", weights_only=False)
    assert sched["last_epoch"] == KILL_AT
    rng = torch.load(ckpt / "rng_state.pth", weights_only=False)
    assert {"python", "numpy", "cpu"} <= set(rng)

    # 3. The same command again: resumes from checkpoint-8 and computes steps 9..12 only.
    resumed = _run(cmd, _env(killed_root))
    assert resumed["metrics"]["resumed_from"] == str(ckpt)
    assert resumed["ran"] == list(range(KILL_AT + 1, CFG.max_steps + 1)), resumed["ran"]
    assert resumed["metrics"]["steps"] == CFG.max_steps
    logged = [h["step"] for h in resumed["history"] if "loss" in h]
    assert logged == list(range(1, CFG.max_steps + 1)), "each step logged once, none redone"

    # 4. The uninterrupted run with the same seed: same adapter, same losses, LRs and grad norms.
    assert straight.metrics["resumed_from"] is None and straight.metrics["steps"] == CFG.max_steps
    _assert_same_adapter(_adapter(tmp_path / "resumed"), _adapter(Path(straight.adapter_dir)))
    for key in ("loss", "learning_rate", "grad_norm"):
        got = [h[key] for h in resumed["history"] if key in h and "train_runtime" not in h]
        want = [h[key] for h in straight.history if key in h and "train_runtime" not in h]
        assert len(got) == CFG.max_steps and torch.allclose(torch.tensor(got), torch.tensor(want), atol=ATOL, rtol=RTOL), key

    # 5. Reproducibility metadata: data hash and library versions (the seed: see the test below).
    assert resumed["data_hash"] and resumed["data_hash"] == straight.data_hash
    assert {"torch", "transformers", "peft", "trl"} <= set(resumed["versions"])
    assert resumed["versions"] == straight.versions and resumed["versions"]["torch"] == torch.__version__


def test_same_seed_data_and_config_give_the_same_adapter(tiny_ref, records, tmp_path, straight):
    """A second in-process run with a fresh checkpoint root (so it does not resume): equal adapter."""
    again = _train_here(tiny_ref, records, tmp_path / "ckpt", tmp_path / "again")
    assert again.metrics["resumed_from"] is None
    _assert_same_adapter(_adapter(tmp_path / "again"), _adapter(Path(straight.adapter_dir)))
    assert again.data_hash == straight.data_hash and again.versions == straight.versions


def test_train_result_records_the_seed(straight):
    assert straight.seed == CFG.seed

