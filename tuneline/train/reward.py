"""RLHF's reward model: LoRA on the base model with a one-number head, trained on preference pairs by TRL's
RewardTrainer (Bradley-Terry: the chosen answer must score above the rejected one).

    zenml pipeline run pipelines.finetune.finetune -c configs/default.yaml \\
        reward_model.enabled=true dpo.loss_type=rloo dpo.sft_weight=0       # the train_reward step runs this

The pairs are DPO's (tuneline.train.dpo): the SFT model's mined mistakes on the mining rows (with dpo.mine_mistakes;
chosen = the gold answer, rejected = what the model said) and the user's data.preference pairs. A seeded
reward_model.heldout_fraction of them is never trained on: the reward model's accuracy there (chosen scored above
rejected) is its figure, before (the random head: about 50%) and after training.

The model is AutoModelForSequenceClassification(num_labels=1) on the base (not on the SFT model: the head reads the
last token's hidden state, and the base is what the RL stage's SFT adapter sits on too), with LoRA on every linear
layer and the head trained in full (PEFT's SEQ_CLS task saves it with the adapter). The RL stage
(tuneline.train.rl) loads it with `load_reward_model` and scores "prompt + sampled answer" in the same chat
template the pairs were rendered in here.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from trl import RewardConfig, RewardTrainer

from tuneline.config import RewardModelConfig
from tuneline.data.readers import DataError
from tuneline.model.base import BaseModelRef, load_tokenizer
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
from tuneline.train.dpo import Pair, mine_pairs, user_pairs
from tuneline.train.memory import peak_memory_mb


def base_classifier(ref: BaseModelRef, tokenizer):
    """The base model with a fresh scalar head (num_labels=1); the pad token set so the head reads the last real
    token of a right-padded row."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(ref.path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_reward_model(ref: BaseModelRef, reward_dir: str | Path):
    """The trained reward model, LoRA merged in (a plain PreTrainedModel, as TRL's RL trainers expect), frozen."""
    tok = load_tokenizer(ref)
    model = PeftModel.from_pretrained(base_classifier(ref, tok), reward_dir).merge_and_unload()
    model.requires_grad_(False)
    return model.eval()


def conversation(prompt: list[dict], answer: str) -> list[dict]:
    return prompt + [{"role": "assistant", "content": answer}]


@torch.no_grad()
def reward_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
    """The reward of each whole conversation, rendered as RewardTrainer and the RL trainers render it (the chat
    template, no extra special tokens, right padding)."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"
    out: list[float] = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out += model(**enc, use_cache=False).logits[:, 0].float().tolist()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def pair_accuracy(model, tokenizer, pairs: list[Pair]) -> dict:
    """Share of pairs whose chosen answer the reward model scores above the rejected one, and the mean margin."""
    if not pairs:
        return {"accuracy": None, "margin": None, "n": 0}
    chosen = reward_scores(model, tokenizer, [conversation(p.prompt, p.chosen) for p in pairs])
    rejected = reward_scores(model, tokenizer, [conversation(p.prompt, p.rejected) for p in pairs])
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": sum(m > 0 for m in margins) / len(pairs), "margin": sum(margins) / len(margins),
            "n": len(pairs)}


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): a seeded shuffle, at least one pair on each side."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    n_held = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    return pairs[n_held:], pairs[:n_held]


def to_dataset(pairs: list[Pair]) -> Dataset:
    return Dataset.from_list([{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                               "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])


def collect_pairs(ref: BaseModelRef, sft_dir: str | None, sft_method: str, mining_records: list[dict],
                  pref_rows: list[dict], mine: bool, max_new_tokens: int, batch_size: int, metric: str,
                  min_margin: float) -> tuple[list[Pair], list[Pair]]:
    """(mined, user) pairs, as DPO would train on them: mining loads the SFT model, generates, and frees it."""
    mined: list[Pair] = []
    if mine and mining_records:
        from tuneline.train.dpo import load_sft

        model = load_sft(ref, sft_dir, sft_method, trainable=False)
        mined, _ = mine_pairs(model, load_tokenizer(ref), mining_records, max_new_tokens, batch_size, metric, min_margin)
        del model
    return mined, user_pairs(pref_rows)


def train(ref: BaseModelRef, pairs: list[Pair], cfg: RewardModelConfig, out_dir: Path,
          mirror: CheckpointMirror | None = None, extra_metrics: dict | None = None) -> TrainResult:
    """Train the reward model on `pairs` (less the held-out share) and save it (LoRA adapter + head) to `out_dir`."""
    if len(pairs) < 2:
        raise DataError(f"the reward model needs at least 2 preference pairs (one to train on, one to check it on) "
                        f"but got {len(pairs)}: set data.preference.file to a pair file, raise data.mining_rows, or "
                        "set reward_model.enabled: false")
    tok = load_tokenizer(ref)
    train_pairs, held = split_pairs(pairs, cfg.heldout_fraction, cfg.seed)
    keys = [p.model_dump_json() for p in train_pairs]
    ckpt = checkpoint_dir("reward", run_key(ref.training_key, code_version("tuneline.train.reward"),
                                            cfg.model_dump_json(), data_hash([{"k": k} for k in keys])))
    args = RewardConfig(**trainer_args(cfg, ckpt), max_length=cfg.max_length)
    peft = LoraConfig(task_type="SEQ_CLS", r=cfg.r, lora_alpha=cfg.alpha, target_modules="all-linear")
    trainer = RewardTrainer(model=base_classifier(ref, tok), args=args, train_dataset=to_dataset(train_pairs),
                            processing_class=tok, peft_config=peft, callbacks=mirror_callbacks(ckpt, mirror))
    before = pair_accuracy(trainer.model, tok, held)
    t0 = time.perf_counter()
    resume = resume_point(ckpt, mirror)
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    after = pair_accuracy(trainer.model, tok, held)
    trainer.model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    history = trainer.state.log_history
    trainable, total = trainable_parameters(trainer.model)
    metrics = {
        **(extra_metrics or {}), "pairs_train": len(train_pairs), "pairs_heldout": len(held),
        "heldout_reward_accuracy_before": before["accuracy"], "heldout_reward_accuracy": after["accuracy"],
        "heldout_reward_margin_before": before["margin"], "heldout_reward_margin": after["margin"],
        "train_accuracy_last": next((h["accuracy"] for h in reversed(history) if "accuracy" in h), None),
        "train_seconds": round(seconds, 1), "trainable_params": trainable, "total_params": total,
        "peak_memory_mb": round(peak_memory_mb(), 1), "first_loss": loss_span(history)[0],
        "final_loss": loss_span(history)[1], "resumed_from": resume, "steps": trainer.state.global_step,
    }
    return TrainResult(adapter_dir=str(out_dir), history=history, metrics=metrics, seed=cfg.seed,
                       data_hash=run_key(*keys), base_sha256=ref.sha256)
