"""What SFT and DPO share: the TrainingArguments both build on, and the result both return.

    TRLSFTConfig(**trainer_args(cfg.sft, ckpt), ...)      # tuneline/train/sft.py
    TrainResult(...).metadata()                          # a training step's metadata (steps/train_*.py)
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, Field

from tuneline.config import DPOConfig, RewardModelConfig, SFTConfig
from tuneline.model.precision import use_bf16
from tuneline.train import checkpoints
from tuneline.versions import TRAINING_LIBRARIES, package_versions


def trainer_args(cfg: SFTConfig | DPOConfig | RewardModelConfig, out: Path, save_steps: int | None = None) -> dict:
    """Arguments every tuneline trainer uses: the schedule from its config section, bf16 autocast where the
    hardware has it, run-keyed checkpoints (optimizer, scheduler and RNG states with them: a re-run resumes
    exactly), no hub, no wandb. Trainable (LoRA) weights stay fp32 under autocast."""
    return dict(
        output_dir=str(out),
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        save_strategy="steps",
        save_steps=save_steps or checkpoints.SAVE_STEPS,
        save_only_model=False,
        save_total_limit=1,
        report_to=[],
        bf16=use_bf16(cfg.bf16),
        # Every section says it (TRL's trainers default to on). DPO's null means "as SFT" and is resolved by the
        # pipeline (DPOConfig.after_sft); a direct call with null trains without.
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
        remove_unused_columns=True,
    )


def labelled_positions_only() -> None:
    """TRL's fused LM head (DPO, KTO, GRPO, RLOO) scores only the positions that have a label, on the CPU too.

    TRL 1.16 compacts to the labelled positions only where its Triton kernel runs (CUDA, XPU); elsewhere it projects
    every position through the vocabulary-wide head, so that XLA devices keep static shapes. On a CPU that is the
    head's matmul, softmax and backward over every prompt token, which the loss then masks out: the default DPO's
    8 steps took 51 s against 23 s compacted (2-core CPU), the same log-probabilities (tests/integration/
    test_labelled_head.py). Idempotent; devices other than the CPU keep TRL's choice."""
    import trl.trainer.utils as fused

    if getattr(fused._use_triton, "compacts_cpu", False):
        return
    triton = fused._use_triton

    def compact(device) -> bool:
        return device.type == "cpu" or triton(device)

    compact.compacts_cpu = True
    fused._use_triton = compact


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def loss_span(history: list[dict], key: str = "loss") -> tuple[float | None, float | None]:
    """First and last logged value of `key` (None when it was never logged)."""
    vals = [h[key] for h in history if key in h]
    return (vals[0], vals[-1]) if vals else (None, None)


def training_versions() -> dict[str, str | None]:
    return package_versions("python", *TRAINING_LIBRARIES)


class TrainResult(BaseModel):
    """What a tuneline trainer returns: where the adapter is, the log history, flat metrics, and what
    makes the run reproducible (seed, data hash, the base model's sha256, library versions)."""

    adapter_dir: str
    history: list[dict]
    metrics: dict
    seed: int
    data_hash: str
    base_sha256: str
    versions: dict[str, str | None] = Field(default_factory=training_versions)

    def reproducibility(self) -> dict:
        """Flat: seed, data hash, base model sha256, one key per library version."""
        return {"seed": self.seed, "data_hash": self.data_hash, "base_sha256": self.base_sha256,
                **{f"version_{k}": v for k, v in self.versions.items()}}

    def metadata(self) -> dict:
        """A training step's metadata: the metrics and what makes the run reproducible."""
        return {**self.metrics, **self.reproducibility()}
