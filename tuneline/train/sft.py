"""Supervised fine-tuning with TRL's SFTTrainer: a PEFT adapter or full weights, per `sft.method`.

    tuneline train configs/default.yaml --out /tmp/sft-adapter
    accelerate launch --num_processes 1 -m tuneline.cli train configs/default.yaml --out /tmp/sft-adapter

Under `accelerate launch` the Trainer takes its device and process group from accelerate; the
single-process path is tested (tests/integration/test_training.py); multi-GPU (`--multi_gpu --num_processes N`)
runs the same code. ZenML's own `run_with_accelerate` cannot wrap `train_sft`: it passes step inputs as
command-line strings, and train_sft takes artifacts.

`sft.method` picks what trains (its `Method` record in tuneline/train/methods.py): a LoRA-family, IA3,
prefix/prompt tuning or X-LoRA adapter (saved as an adapter dir), or full / bitfit / galore (saved as a full
model dir).

Completion-only loss: records become conversational prompt/completion pairs, so TRL masks the
prompt and trains on the assistant turn (its label and the closing <|im_end|>) only.
Continued pretraining (data.shape text): the rows are documents, trained as plain text (no chat template)
with loss on every token, packed by TRL into data.max_tokens blocks: `bfd_split` (a document longer than a
block is split, no token is dropped; documents in one block are kept apart by their position ids), or
`wrapped` (plain concatenate-and-cut) where batches are padded (`padding_free: false`). TRL appends EOS to
each document, so the model learns where documents end. Chat rows mixed in (data.general_mix) are rendered
through the chat template and trained as text too.
Padding-free batches (rows concatenated, positions restarting per row) avoid computing pad
tokens; transformers isolates the rows by their position ids when the KV cache is off (so prefix and
prompt tuning, which bring a cache or drop the position ids, need padding_free: false; config.py says so).
A killed run resumes from its last checkpoint when re-run with the same inputs.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from datasets import Dataset
from peft import prepare_model_for_kbit_training
from trl import SFTConfig as TRLSFTConfig

from tuneline.config import SFTConfig
from tuneline.data.records import messages
from tuneline.disk_space import need_free, training_bytes
from tuneline.model.base import BaseModelRef, load_model, load_tokenizer
from tuneline.model.precision import padding_free_attention, training_dtype, use_bf16
from tuneline.train import long_context
from tuneline.train.args import TrainResult, loss_span, trainable_parameters, trainer_args
from tuneline.train.checkpoints import (
    CheckpointMirror,
    checkpoint_dir,
    code_version,
    data_hash,
    mirror_callbacks,
    resume_point,
    run_key,
)
from tuneline.train.memory import peak_memory_mb
from tuneline.train.methods import Method, method_for, total_steps
from tuneline.train.qlora_guard import guard_callbacks, guarded


def is_text(records: list[dict]) -> bool:
    """Continued pretraining: the task rows are documents (shape text)."""
    return any(r.get("shape") == "text" for r in records)


def to_dataset(records: list[dict], tokenizer=None) -> Dataset:
    """Prompt/completion chats (loss on the answer), or for text rows a `text` column (loss on every token)."""
    if is_text(records):
        return Dataset.from_list([{"text": r["assistant"] if r.get("shape") == "text"
                                   else tokenizer.apply_chat_template(messages(r), tokenize=False)} for r in records])
    rows = [{"prompt": messages(r, with_answer=False), "completion": [{"role": "assistant", "content": r["assistant"]}]}
            for r in records]
    return Dataset.from_list(rows)


def trl_args(cfg: SFTConfig, method: Method, out: Path, max_tokens: int, evaluates: bool = False,
             text: bool = False) -> TRLSFTConfig:
    """TRL's config: the common trainer args, then what SFT adds. Rows are cut at `max_tokens` only when
    padded (padding-free batches have no fixed length); `text` rows are packed into `max_tokens` blocks."""
    common = trainer_args(cfg, out)
    if not method.resumable:
        common["save_strategy"] = "no"  # checkpoints a re-run could not resume from
    if evaluates:
        # The loss only (no logits gathered): what the eval curve plots, and what lets labelled_head_loss serve it.
        common.update(eval_strategy="steps", eval_steps=cfg.eval_steps, per_device_eval_batch_size=cfg.batch_size,
                      prediction_loss_only=True)
    return TRLSFTConfig(
        **common,
        gradient_accumulation_steps=cfg.grad_accum,
        padding_free=cfg.padding_free,
        completion_only_loss=not text,
        max_length=max_tokens if text or not cfg.padding_free else None,
        **({"packing": True, "packing_strategy": "bfd_split" if cfg.padding_free else "wrapped"} if text else {}),
        dataset_num_proc=None,
        **{**paged_optimizer(method), **method.optimizer_args(cfg)},
    )


def paged_optimizer(method: Method) -> dict:
    """QLoRA on CUDA: paged AdamW (the QLoRA paper's), so optimizer-state spikes page to host memory instead of
    running out; bitsandbytes pages only on CUDA, so elsewhere the Trainer's default AdamW."""
    import torch

    return {"optim": "paged_adamw_32bit"} if method.quantize_4bit and torch.cuda.is_available() else {}


def resolve_auto(ref: BaseModelRef, cfg: SFTConfig, max_tokens: int) -> tuple[SFTConfig, str | None]:
    """`method: auto` -> the planner's choice and why; any other method unchanged."""
    if cfg.method != "auto":
        return cfg, None
    from tuneline.train.plan import resolve_method, shape_from_dir

    return resolve_method(shape_from_dir(ref.path), cfg, max_tokens)


def checkpoint_key(ref: BaseModelRef, cfg: SFTConfig, records: list[dict], max_tokens: int = 512,
                   held: list[dict] | None = None) -> str:
    """The run key of SFT's checkpoints: the base weights and chat template, this training code, the config
    (`method: auto` resolved), the row cut and the rows (held-out rows too: their eval loss is in the history)."""
    return run_key(ref.training_key, code_version("tuneline.train.sft"), cfg.model_dump_json(), str(max_tokens),
                   data_hash(records), data_hash(held or []))


def build_trainer(ref: BaseModelRef, records: list[dict], cfg: SFTConfig, ckpt: Path, max_tokens: int = 512,
                  held: list[dict] = (), callbacks: list = ()):
    """The TRL trainer `train` runs (cfg.method already resolved): the base loaded and prepared for the method,
    the rows as TRL datasets (chats, or packed text), checkpoints in `ckpt`."""
    method = method_for(cfg)
    tok = load_tokenizer(ref)
    dtype = training_dtype(use_bf16(cfg.bf16), method.full_weight)
    padding_free_attention(cfg.padding_free)
    model = guarded(load_model(ref, dtype, quantize_4bit=method.quantize_4bit))  # mid-run evaluation would repack 4-bit weights
    model.config.use_cache = False  # the cache defeats padding-free row isolation, costs memory; xlora requires it off
    if cfg.long_context:  # LongLoRA: S²-Attn while training (tuneline/train/long_context.py)
        long_context.enable(model, cfg.long_context.group_size_ratio)
    if method.quantize_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    peft = method.peft_config(cfg, model.config.num_hidden_layers, model.config.hidden_size,
                              total_steps(len(records), cfg))
    method.set_trainable(model)
    args = trl_args(cfg, method, ckpt, max_tokens, bool(held), is_text(records))
    trainer = method.trainer(model=model, args=args, train_dataset=to_dataset(records, tok),
                             eval_dataset=to_dataset(list(held), tok) if held else None, processing_class=tok,
                             peft_config=peft, callbacks=method.callbacks() + guard_callbacks(model) + list(callbacks))
    if cfg.labelled_head and cfg.method in LABELLED_HEAD_METHODS and not is_text(records) and plain_head(model.config):
        trainer.compute_loss = partial(labelled_head_loss, trainer)  # the Trainer calls self.compute_loss
    return trainer


# Methods whose loss is the plain token loss of the base's forward: AdaLoRA adds its orthogonality term in the
# PEFT forward, prompt methods change the sequence, X-LoRA runs a gate pass; those keep TRL's loss.
LABELLED_HEAD_METHODS = ("lora", "qlora", "dora", "rslora")


def plain_head(config) -> bool:
    """Whether the logits are the output embedding's matmul alone: Gemma 2's final softcapping and Cohere's
    logit scale happen in the model's forward, which labelled_head_loss skips (those keep TRL's loss)."""
    return (getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) in (None, 1, 1.0))


def labelled_head_loss(trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
    """TRL's completion-only token loss with the LM head applied only where a label is (~22 % of the tokens
    of a Banking77 batch: the answer and <|im_end|>); the prompt positions, masked from the loss anyway, skip
    the vocabulary-wide matmul and softmax. Same loss and gradients as TRL's (bench/train_throughput.py
    --levers: x1.3-1.5 tokens per CPU-second on SmolLM2-135M). The held-out loss takes it too (eval_steps: 8.5 ->
    ~3 s per evaluation on the default run); `return_outputs` (logits wanted) keeps TRL's path. The logged entropy
    and token accuracy are TRL's, on the labelled positions."""
    import torch

    if return_outputs:
        return type(trainer).compute_loss(trainer, model, inputs, return_outputs, num_items_in_batch)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    # Accelerate applies bf16 autocast by wrapping model.forward; the decoder called directly needs it here
    # (without it every matmul ran in fp32: 209 against 272 tokens/s on the 2-core CPU).
    with trainer.accelerator.autocast():
        hidden = causal_lm.get_decoder()(**{k: v for k, v in inputs.items() if k not in ("labels", "use_cache")},
                                         use_cache=False).last_hidden_state
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    targets = labels[keep]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    count = keep.sum() if num_items_in_batch is None else num_items_in_batch
    loss = losses.sum() / torch.as_tensor(count).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes  # as TRL: DDP averages the gradients across ranks
    _log_token_metrics(trainer, inputs, logits.detach(), targets, int(keep.sum()))
    return loss


def _log_token_metrics(trainer, inputs, logits, targets, n: int) -> None:
    """The entropy, token accuracy and token count TRL logs for each training step and evaluation batch."""
    import torch

    training = trainer.model.training
    metrics = trainer._metrics["train" if training else "eval"]
    logp = torch.log_softmax(logits, -1)
    metrics["entropy"].append(float(-(logp.exp() * logp).sum(-1).mean()) if n else 0.0)
    metrics["mean_token_accuracy"].append(float((logits.argmax(-1) == targets).float().mean()) if n else 0.0)
    if training:
        mask = inputs.get("attention_mask")
        trainer._total_train_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].shape[1]
    metrics["num_tokens"] = [trainer._total_train_tokens]


def train(ref: BaseModelRef, records: list[dict], cfg: SFTConfig, out_dir: Path, max_tokens: int = 512,
          mirror: CheckpointMirror | None = None, eval_records: list[dict] | None = None) -> TrainResult:
    """Train `cfg.method` on `records` (task rows); save the adapter (or, full-weight methods, the model) to out_dir.

    `method: auto` is resolved here, on the machine that trains, for its memory (rows of up to `max_tokens`).
    Rows longer than `max_tokens` are cut when batches are padded (`padding_free: false`); documents (shape
    text) are packed into `max_tokens` blocks.
    `mirror` gets a copy of every checkpoint and gives the newest back when this machine has none.
    `eval_records` (held-out rows) give the eval loss curve when `cfg.eval_steps` is set."""
    cfg, auto_reason = resolve_auto(ref, cfg, max_tokens)
    method = method_for(cfg)
    held = (eval_records or [])[: cfg.eval_rows] if cfg.eval_steps else []
    ckpt = checkpoint_dir("sft", checkpoint_key(ref, cfg, records, max_tokens, held))
    trainer = build_trainer(ref, records, cfg, ckpt, max_tokens, held, mirror_callbacks(ckpt, mirror))
    tok = trainer.processing_class
    trainable, total = trainable_parameters(trainer.model)
    need_free(dict(zip((ckpt, out_dir), training_bytes(trainable, total, method.full_weight))), f"SFT ({cfg.method})")
    t0 = time.perf_counter()
    resume = resume_point(ckpt, mirror) if method.resumable else None
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    if held and trainer.state.global_step % cfg.eval_steps:  # the curve ends where training ended
        trainer.evaluate()
    long_context.disable(trainer.model)  # full attention for whoever uses the trained model next
    method.save(trainer.model, out_dir)
    tok.save_pretrained(out_dir)
    history = trainer.state.log_history
    tokens = trainer.state.num_input_tokens_seen or _tokens_from_history(history)
    metrics = {
        "method": cfg.method, "trainable_params": trainable, "total_params": total,
        "train_seconds": round(seconds, 1), "train_tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "peak_memory_mb": round(peak_memory_mb(), 1), "final_loss": loss_span(history)[1],
        "first_loss": loss_span(history)[0], "first_eval_loss": loss_span(history, "eval_loss")[0],
        "final_eval_loss": loss_span(history, "eval_loss")[1], "resumed_from": resume,
        "gradient_checkpointing": cfg.gradient_checkpointing, "auto_method": auto_reason,
        "steps": trainer.state.global_step,
    }
    return TrainResult(adapter_dir=str(out_dir), history=history, metrics=metrics, seed=cfg.seed,
                       data_hash=data_hash(records), base_sha256=ref.sha256)


def _tokens_from_history(history: list[dict]) -> int:
    return int(max((h.get("num_tokens", 0) for h in history), default=0))
