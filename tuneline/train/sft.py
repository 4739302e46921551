"""Supervised fine-tuning with TRL's SFTTrainer: a PEFT adapter or full weights, per `sft.method`.

    python -m tuneline.train.sft configs/default.yaml /tmp/sft-adapter
    accelerate launch --num_processes 1 -m tuneline.train.sft configs/default.yaml /tmp/sft-adapter

Under `accelerate launch` the Trainer takes its device and process group from accelerate; the
single-process path is tested (tests/integration/test_training.py); multi-GPU (`--multi_gpu --num_processes N`)
is the same code but was not run here (no GPU). ZenML's own `run_with_accelerate` cannot wrap
`train_sft`: it passes step inputs as command-line strings, and train_sft takes artifacts.

`sft.method` picks what trains (tuneline/train/methods.py): a LoRA-family, IA3, prefix/prompt tuning or
X-LoRA adapter (saved as an adapter dir), or full / bitfit / galore (saved as a full model dir).

Completion-only loss: records become conversational prompt/completion pairs, so TRL masks the
prompt and trains on the assistant turn (its label and the closing <|im_end|>) only.
Padding-free batches (rows concatenated, positions restarting per row) avoid computing pad
tokens; transformers isolates the rows by their position ids when the KV cache is off (so prefix and
prompt tuning, which bring a cache or drop the position ids, need padding_free: false; config.py says so).
A killed run resumes from its last checkpoint when re-run with the same inputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datasets import Dataset
from peft import prepare_model_for_kbit_training
from trl import SFTConfig as TRLSFTConfig

from tuneline.model.base import BaseModelRef, load_model, load_tokenizer
from tuneline.config import SFTConfig
from tuneline.data.validate import messages
from tuneline.train.methods import (
    callbacks,
    can_resume,
    lora_config,  # noqa: F401  (its old home: tests import it from here)
    optimizer_args,
    peft_config,
    save,
    set_trainable,
    total_steps,
    trainer_class,
)
from tuneline.train.common import (
    CheckpointMirror,
    TrainResult,
    checkpoint_dir,
    common_args,
    loss_span,
    mirror_callbacks,
    peak_memory_mb,
    resume_point,
    run_key,
    trainable_parameters,
)


def to_dataset(records: list[dict]) -> Dataset:
    rows = [{"prompt": messages(r, with_answer=False), "completion": [{"role": "assistant", "content": r["assistant"]}]}
            for r in records]
    return Dataset.from_list(rows)


def trl_args(cfg: SFTConfig, out: Path, evaluates: bool = False) -> TRLSFTConfig:
    common = common_args(out, cfg.seed, cfg.logging_steps, cfg.bf16)
    if not can_resume(cfg):
        common["save_strategy"] = "no"  # checkpoints a re-run could not resume from (adalora, xlora)
    if evaluates:
        common.update(eval_strategy="steps", eval_steps=cfg.eval_steps, per_device_eval_batch_size=cfg.batch_size)
    return TRLSFTConfig(
        **common,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        padding_free=cfg.padding_free,
        completion_only_loss=True,
        max_length=None if cfg.padding_free else 512,
        dataset_num_proc=None,
        **optimizer_args(cfg),
    )


def resolve_auto(ref: BaseModelRef, cfg: SFTConfig, max_tokens: int) -> tuple[SFTConfig, str | None]:
    """`method: auto` -> the planner's choice and why; any other method unchanged."""
    if cfg.method != "auto":
        return cfg, None
    from tuneline.train.plan import resolve_method, shape_from_dir

    return resolve_method(shape_from_dir(ref.path), cfg, max_tokens)


def train(ref: BaseModelRef, records: list[dict], cfg: SFTConfig, out_dir: Path, max_tokens: int = 512,
          mirror: CheckpointMirror | None = None, eval_records: list[dict] | None = None) -> TrainResult:
    """Train `cfg.method` on `records` (task rows); save the adapter (or, full-weight methods, the model) to out_dir.

    `method: auto` is resolved here, on the machine that trains, for its memory (rows of up to `max_tokens`).
    `mirror` gets a copy of every checkpoint and gives the newest back when this machine has none.
    `eval_records` (held-out rows) give the eval loss curve when `cfg.eval_steps` is set."""
    cfg, auto_reason = resolve_auto(ref, cfg, max_tokens)
    tok = load_tokenizer(ref)
    model = load_model(ref, quantize_4bit=cfg.method == "qlora")
    model.config.use_cache = False  # the cache defeats padding-free row isolation, costs memory; xlora requires it off
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    peft = peft_config(cfg, model.config.num_hidden_layers, model.config.hidden_size, total_steps(len(records), cfg))
    if peft is None:
        set_trainable(model, cfg.method)
    data_hash = run_key(*(json.dumps(r, sort_keys=True, default=str) for r in records))
    ckpt = checkpoint_dir("sft", run_key(ref.sha256, cfg.model_dump_json(), data_hash))
    held = (eval_records or [])[: cfg.eval_rows] if cfg.eval_steps else []
    trainer = trainer_class(cfg)(model=model, args=trl_args(cfg, ckpt, bool(held)), train_dataset=to_dataset(records),
                                 eval_dataset=to_dataset(held) if held else None,
                                 processing_class=tok, peft_config=peft,
                                 callbacks=callbacks(cfg) + mirror_callbacks(ckpt, mirror))
    trainable, total = trainable_parameters(trainer.model)
    t0 = time.perf_counter()
    resume = resume_point(ckpt, mirror) if can_resume(cfg) else None
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    if held and trainer.state.global_step % cfg.eval_steps:  # the curve ends where training ended
        trainer.evaluate()
    save(trainer.model, out_dir, cfg)
    tok.save_pretrained(out_dir)
    history = trainer.state.log_history
    tokens = trainer.state.num_input_tokens_seen or _tokens_from_history(history)
    metrics = {
        "method": cfg.method, "trainable_params": trainable, "total_params": total,
        "train_seconds": round(seconds, 1), "train_tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "peak_memory_mb": round(peak_memory_mb(), 1), "final_loss": loss_span(history)[1],
        "first_loss": loss_span(history)[0], "first_eval_loss": loss_span(history, "eval_loss")[0],
        "final_eval_loss": loss_span(history, "eval_loss")[1], "resumed_from": resume, "data_hash": data_hash, "seed": cfg.seed,
        "gradient_checkpointing": cfg.gradient_checkpointing, "auto_method": auto_reason,
        "steps": trainer.state.global_step,
    }
    return TrainResult(adapter_dir=str(out_dir), history=history, metrics=metrics)


def _tokens_from_history(history: list[dict]) -> int:
    return int(max((h.get("num_tokens", 0) for h in history), default=0))


def main(argv: list[str] | None = None) -> None:
    import argparse

    import pandas as pd

    from tuneline.model.base import prepare
    from tuneline.config import load
    from tuneline.data.validate import validate

    ap = argparse.ArgumentParser(prog="python -m tuneline.train.sft", description=__doc__.split("\n")[0])
    ap.add_argument("config"), ap.add_argument("out")
    ap.add_argument("--records", help="task rows as Parquet (a task_data artifact); default: validate the config's data")
    args = ap.parse_args(argv)
    cfg = load(args.config)
    ref = prepare(cfg.base_model)
    task = pd.read_parquet(args.records) if args.records else validate(cfg.data, load_tokenizer(ref)).task
    res = train(ref, task[task.split == "train"].to_dict("records"), cfg.sft, Path(args.out), cfg.data.max_tokens)
    print("METRICS " + json.dumps(res.metrics))


if __name__ == "__main__":
    main()
