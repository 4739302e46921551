"""What SFT and DPO share: TrainingArguments defaults, run-keyed checkpoints, metrics, the loss plot."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import resource
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Protocol

import torch
from pydantic import BaseModel, Field, model_validator
from transformers import TrainerCallback

CHECKPOINT_ROOT = Path(os.environ.get("TUNELINE_CHECKPOINTS", "~/.cache/tuneline/checkpoints")).expanduser()
# Optimizer steps between checkpoints (only the newest is kept). The kill-and-resume test sets it low.
SAVE_STEPS = int(os.environ.get("TUNELINE_SAVE_STEPS", "50"))
# What a checkpoint holds to resume exactly (single process); the Trainer writes trainer_state.json last.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")
LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets")


def run_key(*parts: str) -> str:
    """Checkpoints live under a key of everything that determines the result, so a re-run resumes."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def checkpoint_dir(kind: str, key: str) -> Path:
    return CHECKPOINT_ROOT / f"{kind}-{key}"


def checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint a killed run left whole: its trainer_state.json, which the Trainer writes after the
    weights, optimizer, scheduler and RNG states, is there, parses, and names this step. A SIGKILL
    during a save leaves a newer, partial dir beside the last whole one."""
    try:
        return json.loads((ckpt / "trainer_state.json").read_text()).get("global_step") == int(ckpt.name.split("-")[1])
    except (OSError, ValueError):
        return False


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint under a run's dir (None: start from scratch)."""
    ckpts = [p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit()] if out.exists() else []
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if checkpoint_complete(ckpt):
            return str(ckpt)
    return None


class CheckpointMirror(Protocol):
    """Somewhere durable that each checkpoint is copied to as it is written (steps/_checkpoints.py: the
    ZenML artifact store), so a re-run on a machine without the local dir (a new pod) resumes too."""

    def save(self, name: str, ckpt: Path, step: int) -> None: ...

    def restore(self, name: str, into: Path) -> Path | None: ...


class DirMirror:
    """A mirror in a plain directory (tests, and single machines with a shared disk)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(self, name: str, ckpt: Path, step: int) -> None:
        dst = self.root / name
        shutil.rmtree(dst, ignore_errors=True)  # only the newest is kept, as locally
        shutil.copytree(ckpt, dst / ckpt.name)

    def restore(self, name: str, into: Path) -> Path | None:
        found = last_checkpoint(self.root / name)
        if not found:
            return None
        shutil.copytree(found, into / Path(found).name, dirs_exist_ok=True)
        return into / Path(found).name


class MirrorCheckpoints(TrainerCallback):
    """Hands every checkpoint to the mirror right after the Trainer wrote it (trainer_state.json included)."""

    def __init__(self, mirror: CheckpointMirror, name: str) -> None:
        self.mirror, self.name = mirror, name

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.mirror.save(self.name, Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)


def mirror_callbacks(ckpt: Path, mirror: CheckpointMirror | None) -> list[TrainerCallback]:
    return [MirrorCheckpoints(mirror, ckpt.name)] if mirror else []


def resume_point(ckpt: Path, mirror: CheckpointMirror | None = None) -> str | None:
    """The checkpoint to resume from: the local one, else the mirror's newest copied back (a new machine)."""
    if last_checkpoint(ckpt) is None and mirror is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        mirror.restore(ckpt.name, ckpt)
    return last_checkpoint(ckpt)


def library_versions() -> dict[str, str]:
    """Versions that decide a run's numbers, for its metadata."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast then runs matmuls about 2x faster than fp32 on CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(setting: str) -> bool:
    if setting != "auto":
        return setting == "true"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def common_args(out: Path, seed: int, logging_steps: int, bf16: str = "auto", save_steps: int | None = None) -> dict:
    """Arguments every tuneline trainer uses: bf16 autocast where the hardware has it, run-keyed
    checkpoints (optimizer, scheduler and RNG states with them: a re-run resumes exactly), no hub,
    no wandb. Trainable (LoRA) weights stay fp32 under autocast."""
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(out),
        seed=seed,
        data_seed=seed,
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=save_steps or SAVE_STEPS,
        save_only_model=False,
        save_total_limit=1,
        report_to=[],
        bf16=use_bf16(bf16),
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=False,
        remove_unused_columns=True,
    )


def rss_mb() -> float:
    """Resident memory of this process now (Linux; 0.0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _release_freed_memory() -> None:
    """Hand memory freed earlier back to the OS (glibc keeps it), so the next peak is not hidden in it."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_rss_delta():
    """Peak resident memory above the level at entry, in MB, for the code inside the block (CPU):
    resets the kernel's high-water mark (VmHWM, Linux >= 4.0) at entry and reads it at exit.

        with peak_rss_delta() as peak:
            trainer.train()
        peak["mb"]
    """
    _release_freed_memory()
    result = {"mb": None, "base_mb": rss_mb()}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    try:
        yield result
    finally:
        if resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    result["mb"] = int(line.split()[1]) / 1024 - result["base_mb"]


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if platform.system() != "Darwin" else rss / 2**20


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def loss_curve_html(history: list[dict], title: str) -> str:
    """A self-contained HTML page with the training (and eval) loss plot as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), marker="." if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    rows = "".join(f"<tr><td>{h.get('step')}</td><td>{h.get('loss', '')}</td><td>{h.get('eval_loss', '')}</td></tr>"
                   for h in history if "loss" in h or "eval_loss" in h)
    return (
        f"<html><body style='font-family:sans-serif'><h3>{title}</h3><img src='data:image/png;base64,{img}'/>"
        "<details><summary>values</summary><table><tr><th>step</th><th>train loss</th><th>eval loss</th></tr>"
        f"{rows}</table></details></body></html>"
    )


class TrainResult(BaseModel):
    """What a tuneline trainer returns: where the adapter is, the log history, flat metrics, and what
    makes the run reproducible (seed, data hash, library versions). `seed` and `data_hash` are taken
    from `metrics` when the trainer put them there and did not pass them."""

    adapter_dir: str
    history: list[dict]
    metrics: dict
    seed: int | None = None
    data_hash: str | None = None
    versions: dict[str, str] = Field(default_factory=library_versions)

    @model_validator(mode="after")
    def _from_metrics(self) -> "TrainResult":
        if self.seed is None and isinstance(self.metrics.get("seed"), int):
            self.seed = self.metrics["seed"]
        if self.data_hash is None and self.metrics.get("data_hash"):
            self.data_hash = str(self.metrics["data_hash"])
        return self

    def reproducibility(self) -> dict:
        """Flat metadata for the step: seed, data hash, one key per library version."""
        return {"seed": self.seed, "data_hash": self.data_hash, **{f"version_{k}": v for k, v in self.versions.items()}}


def loss_span(history: list[dict], key: str = "loss") -> tuple[float | None, float | None]:
    """First and last logged value of `key` (None when it was never logged)."""
    vals = [h[key] for h in history if key in h]
    return (vals[0], vals[-1]) if vals else (None, None)
