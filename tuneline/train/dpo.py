"""Preference alignment with TRL's DPOTrainer (or ORPO, SimPO, KTO: `dpo.loss_type`), from the SFT adapter.

    tuneline train configs/default.yaml --stage dpo --sft-adapter /tmp/sft-adapter --out /tmp/dpo-adapter

Lineage: the SFT adapter is loaded trainable as "default"; TRL copies it to a frozen "ref"
adapter, so the reference is exactly the SFT model and the base weights exist once in memory.
The saved DPO adapter is the trained "default" only (same shape as its SFT parent).
A full-weight SFT model (sft.method full, bitfit, galore) is trained in full (bitfit: its biases; galore:
with plain AdamW) and saved as a full model dir; TRL loads the reference from the SFT dir (a second copy).
Prompt-based and X-LoRA adapters cannot be re-trained by DPO (config.py refuses dpo.enabled with them).

Pairs come from two sources:
- mined: the SFT model answers unused training rows (data.mining_rows, data.max_new_tokens tokens); an answer
  that scores at least `dpo.min_margin` below the gold answer on the task metric (evaluate.metric; exact_match:
  any wrong answer) becomes a pair (chosen = the gold answer, rejected = what the model said): on-policy
  negatives. For generated text (token F1, ROUGE) the margin keeps answers that are nearly right, and would
  teach DPO to prefer one wording over an equally good one, out of the pairs. Multi-task rows (data.tasks) are
  answered with their own task's length and judged with its metric (tuneline.eval.task.row_metrics);
- user pairs: data.preference, any pair file whose columns map to prompt/chosen/rejected, read and
  checked by the data step (with dpo.mine_mistakes: false, DPO trains on them alone).
An SFT (NLL) term on the chosen answer (`sft_weight`) keeps DPO from lowering both
log-probabilities, the known way plain DPO wrecks a small model.

`loss_type` orpo (TRL's ORPOTrainer) and simpo (CPOTrainer, loss simpo) are reference-free: no "ref"
adapter, and `beta` is ORPO's lambda / SimPO's reward scale; kto (KTOTrainer) splits every pair into
a desirable and an undesirable answer and keeps the SFT model as its reference, like DPO.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from pydantic import BaseModel
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from tuneline.config import RL_LOSSES, DPOConfig
from tuneline.data.readers import DataError
from tuneline.data.records import messages
from tuneline.disk_space import need_free, training_bytes
from tuneline.eval.scoring import metric_name, score_items
from tuneline.eval.task import generate_rows, row_metrics
from tuneline.model.adapters import is_adapter_dir, load_adapter, load_full
from tuneline.model.base import BaseModelRef, load_model, load_tokenizer
from tuneline.model.precision import eval_autocast, training_dtype, use_bf16
from tuneline.train.args import TrainResult, labelled_positions_only, loss_span, trainable_parameters, trainer_args
from tuneline.train.checkpoints import (
    CheckpointMirror,
    checkpoint_dir,
    code_version,
    data_hash,
    dir_hash,
    mirror_callbacks,
    resume_point,
    run_key,
)
from tuneline.train.memory import peak_memory_mb
from tuneline.train.methods import method_for
from tuneline.train.qlora_guard import guard_4bit, guard_callbacks, guarded


class Pair(BaseModel):
    prompt: list[dict]
    chosen: str
    rejected: str
    origin: str


class Mining(BaseModel):
    """What mining found: per answer, how far it scored below the gold answer on the task metric."""

    metric: str = "exact_match"
    min_margin: float = 0.0
    rows: int = 0
    mistakes: int = 0  # answers at least min_margin below the gold: the mined pairs
    near: int = 0  # answers below the gold, but by less than min_margin: not pairs
    mean_gap: float | None = None  # mean of (gold's score - answer's score), metric points


EPS = 1e-9  # a gap of exactly min_margin holds: 1 - 0.8 is 0.19999999999999996 in floats


def select_mistakes(records: list[dict], predictions: list[str], metric: str,
                    min_margin: float) -> tuple[list[Pair], Mining]:
    """The pairs among the model's answers: those scoring at least `min_margin` below the gold answer.

    The gold answer's score is its own against itself (1, except ROUGE on a gold with no [a-z0-9] token, 0: such a
    row cannot tell a better answer, and gives no pair). exact_match scores 0 or 1, so there any wrong answer is a
    mistake, whatever the margin; an empty answer is a mistake under every metric."""
    golds = [r["assistant"] for r in records]
    metrics = row_metrics(records, metric)  # multi-task rows: each scored with its own task's metric
    gaps = [b - s for b, s in zip(score_items(golds, golds, metrics), score_items(predictions, golds, metrics))]
    holds = [gap > 0 and gap >= min_margin - EPS for gap in gaps]
    pairs = [Pair(prompt=messages(r, with_answer=False), chosen=r["assistant"], rejected=p.strip(), origin=r["id"])
             for r, p, ok in zip(records, predictions, holds) if ok]
    near = sum(gap > 0 and not ok for gap, ok in zip(gaps, holds))
    return pairs, Mining(metric=metric_name(metrics) if records else metric, min_margin=min_margin,
                         rows=len(records), mistakes=len(pairs), near=near,
                         mean_gap=round(sum(gaps) / len(gaps), 4) if gaps else None)


def mine_pairs(model, tokenizer, records: list[dict], max_new_tokens: int, batch_size: int,
               metric: str = "exact_match", min_margin: float = 0.2) -> tuple[list[Pair], Mining]:
    """The SFT model's answers on the mining rows, and the mistakes among them (`select_mistakes`)."""
    preds = generate_rows(model, tokenizer, records, max_new_tokens, batch_size)[0]  # multi-task: each task's length
    return select_mistakes(records, preds, metric, min_margin)


def user_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair(prompt=json.loads(r["prompt"]), chosen=r["chosen"], rejected=r["rejected"], origin=r["id"]) for r in rows]


def too_few_pairs(cfg: DPOConfig, mined: int, mining_rows: int, user: int, mining: Mining | None = None) -> str:
    """Why DPO got fewer than 2 pairs, with the setting that would give it more (the data gate checks what it can
    before training; this is what only mining can tell)."""
    got = f"DPO needs at least 2 preference pairs but got {mined + user}"
    if not cfg.mine_mistakes:
        why = (f"dpo.mine_mistakes is false and data.preference gave {user} pairs: set data.preference.file "
               "(and .columns, .rows) to a file with more pairs, or set dpo.mine_mistakes: true")
    elif not mining_rows:
        why = (f"the task data has no mining rows, and data.preference gave {user} pairs: run it through the data "
               "gate (`tuneline validate`), which puts data.mining_rows rows in the mining split")
    elif mining is not None and mining.metric != "exact_match":
        why = (f"{mined} of the SFT model's {mining_rows} answers on the mining rows scored at least "
               f"dpo.min_margin={mining.min_margin} below the gold answer on {mining.metric} ({mining.near} more "
               f"scored below it by less; mean gap {mining.mean_gap}), and data.preference gave {user} pairs: lower "
               "dpo.min_margin, raise data.mining_rows where the training file has rows to spare, or set "
               "data.preference")
    else:
        why = (f"the SFT model answered {mining_rows - mined} of its {mining_rows} mining rows right, so it made "
               f"{mined} mistakes to learn from, and data.preference gave {user} pairs: raise data.mining_rows "
               "where the training file has rows to spare, or set data.preference")
    return f"{got}: {why}. Or set dpo.enabled: false."


def to_dataset(pairs: list[Pair]) -> Dataset:
    return Dataset.from_list([
        {"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]}
        for p in pairs
    ])


@torch.no_grad()
def preference_accuracy(model, tokenizer, pairs: list[Pair]) -> dict:
    """Share of pairs where the mean per-token log-likelihood of chosen beats rejected, and the mean margin.

    TRL's rewards/accuracies is 0 before training by construction (policy == reference); this
    length-normalized comparison means the same thing before and after.
    """
    if not pairs:
        return {"accuracy": None, "margin": None, "n": 0}
    was_training = model.training
    model.eval()
    wins, margins = 0, []
    for p in pairs:
        c, r = (_mean_logprob(model, tokenizer, p.prompt, ans) for ans in (p.chosen, p.rejected))
        wins += c > r
        margins.append(c - r)
    model.train(was_training)
    return {"accuracy": wins / len(pairs), "margin": sum(margins) / len(margins), "n": len(pairs)}


def _mean_logprob(model, tokenizer, prompt: list[dict], answer: str) -> float:
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    n_head = len(tokenizer(head, add_special_tokens=False).input_ids)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    logits = model(ids, use_cache=False).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[n_head - 1 :].mean().item()


def trl_args(cfg: DPOConfig, out: Path):
    """The TRL config of the trainer that implements `cfg.loss_type` (see `preference_trainer`)."""
    common = dict(**trainer_args(cfg, out), beta=cfg.beta, max_length=cfg.max_length)
    if cfg.loss_type == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common)  # beta is ORPO's lambda; its loss holds the NLL term itself
    if cfg.loss_type == "simpo":
        from trl.experimental.cpo import CPOConfig

        return CPOConfig(**common, loss_type="simpo", simpo_gamma=cfg.simpo_gamma, cpo_alpha=cfg.sft_weight)
    if cfg.loss_type == "kto":
        from trl import KTOConfig

        return KTOConfig(**common)
    losses, weights = [cfg.loss_type], [1.0]
    if cfg.sft_weight > 0:
        losses.append("sft")
        weights.append(cfg.sft_weight)
    return TRLDPOConfig(**common, loss_type=losses, loss_weights=weights)


def unpaired(pairs: list[Pair]) -> Dataset:
    """KTO's data shape: each pair gives a desirable (chosen) and an undesirable (rejected) answer."""
    return Dataset.from_list([
        {"prompt": p.prompt, "completion": [{"role": "assistant", "content": answer}], "label": good}
        for p in pairs for answer, good in ((p.chosen, True), (p.rejected, False))
    ])


def preference_trainer(cfg: DPOConfig, model, tok, pairs: list[Pair], ckpt: Path, callbacks: list):
    """DPOTrainer for sigmoid/ipo/hinge; ORPO and SimPO (CPOTrainer) need no reference model; KTO
    learns from unpaired answers. DPO and KTO copy the SFT adapter to a frozen "ref" adapter."""
    args = trl_args(cfg, ckpt)
    labelled_positions_only()
    kwargs = dict(model=model, args=args, processing_class=tok, callbacks=callbacks)
    if cfg.loss_type == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(**kwargs, train_dataset=to_dataset(pairs))
    if cfg.loss_type == "simpo":
        from trl.experimental.cpo import CPOTrainer

        return CPOTrainer(**kwargs, train_dataset=to_dataset(pairs))
    if cfg.loss_type == "kto":
        from trl import KTOTrainer

        return KTOTrainer(**kwargs, train_dataset=unpaired(pairs))
    return DPOTrainer(**kwargs, train_dataset=to_dataset(pairs))


def load_sft(ref: BaseModelRef, sft_dir: str, method: str, trainable: bool, bf16: bool = False):
    """The SFT result DPO starts from; trainable as `method` trained it (bitfit: biases only). `bf16`: training
    under bf16 autocast, so an adapter's base is loaded in bf16 (precision.training_dtype)."""
    m = method_for(method)
    if not is_adapter_dir(sft_dir):
        model = load_full(sft_dir, trainable)
        if trainable:
            m.set_trainable(model)
        return model
    dtype = training_dtype(bf16, m.full_weight)
    model = guarded(load_model(ref, dtype, quantize_4bit=m.quantize_4bit))  # mining generates on it before training
    model.config.use_cache = False
    return load_adapter(model, sft_dir, trainable=trainable)


def copy_to_ref_adapter(model) -> None:
    """Make TRL's frozen "ref" adapter an exact copy of "default" (the SFT adapter).

    TRL 1.16 copies only parameters whose name contains ".default.", which misses adapters stored in
    ParameterDicts (IA3's ia3_l.default, AdaLoRA's lora_A/B/E.default): their reference would silently be
    the freshly initialised adapter, i.e. the base model, not the SFT model.
    """
    if not isinstance(model, PeftModel) or "ref" not in model.peft_config:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            ref = name.replace(".default.", ".ref.") if ".default." in name else name.removesuffix(".default") + ".ref"
            if ref != name and ref in params:
                params[ref].copy_(param)


def checkpoint_key(ref: BaseModelRef, sft_dir: str, sft_method: str, cfg: DPOConfig, mining_records: list[dict],
                   pref_rows: list[dict], train_pairs: list[Pair]) -> str:
    """The run key of DPO's checkpoints: the base weights, the SFT result it starts from (every file of it),
    this training code, the config, and the data (mining rows, user pairs, and the pairs it trains on)."""
    return run_key(ref.training_key, dir_hash(sft_dir), sft_method, code_version("tuneline.train.dpo"), cfg.model_dump_json(),
                   data_hash(mining_records), data_hash(pref_rows), *(p.model_dump_json() for p in train_pairs))


class PolicyRun(BaseModel):
    """What running a DPO or RL trainer on the SFT result measured (train_policy)."""

    trainable: int
    total: int
    seconds: float
    resumed_from: str | None


def train_policy(trainer, ckpt: Path, out_dir: Path, mirror: CheckpointMirror | None, what: str) -> PolicyRun:
    """Train a preference or RL trainer on the SFT model: its frozen reference adapter, the free-space check,
    resuming from `ckpt`; the "default" (trained) adapter is active afterwards."""
    copy_to_ref_adapter(trainer.model)
    trainable, total = trainable_parameters(trainer.model)
    full = not isinstance(trainer.model, PeftModel)
    need_free(dict(zip((ckpt, out_dir), training_bytes(trainable, total, full))), what)
    t0 = time.perf_counter()
    resume = resume_point(ckpt, mirror)
    trainer.train(resume_from_checkpoint=resume)
    if isinstance(trainer.model, PeftModel):
        trainer.model.set_adapter("default")
    return PolicyRun(trainable=trainable, total=total, seconds=time.perf_counter() - t0, resumed_from=resume)


def save_policy(model, tok, out_dir: Path) -> None:
    """The trained adapter alone (not TRL's frozen reference copy), or the full model, with its tokenizer."""
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir, selected_adapters=["default"])
    else:
        model.config.use_cache = True
        model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def train(ref: BaseModelRef, sft_dir: str, sft_method: str, mining_records: list[dict], pref_rows: list[dict],
          cfg: DPOConfig, out_dir: Path, max_new_tokens: int = 12, batch_size: int = 32,
          mirror: CheckpointMirror | None = None, metric: str = "exact_match",
          reward_dir: str | None = None) -> TrainResult:
    """`max_new_tokens`: data.max_new_tokens as the data step resolved it; `metric`: evaluate.metric, which
    mining judges the SFT model's answers by (with dpo.min_margin). loss_type rloo | grpo is RL, not preference
    training: tuneline.train.rl, scored by the reward model at `reward_dir` or by `metric`."""
    if cfg.loss_type in RL_LOSSES:
        from tuneline.train.rl import train as train_rl

        return train_rl(ref, sft_dir, sft_method, mining_records, pref_rows, cfg, out_dir, max_new_tokens, mirror,
                        metric, reward_dir)
    tok = load_tokenizer(ref)
    model = load_sft(ref, sft_dir, sft_method, trainable=True, bf16=use_bf16(cfg.bf16))
    t0 = time.perf_counter()
    mined, mining = [], Mining(metric=metric, min_margin=cfg.min_margin)
    if cfg.mine_mistakes:
        with eval_autocast(cfg.bf16, four_bit=sft_method == "qlora"):  # generation only: as the evaluation answers
            mined, mining = mine_pairs(model, tok, mining_records, max_new_tokens, batch_size, metric, cfg.min_margin)
    guard_4bit(model)  # generation must not have left a 4-bit weight in the layout without a backward
    mining_seconds = time.perf_counter() - t0
    pairs = mined + user_pairs(pref_rows)
    if len(pairs) < 2:
        raise DataError(too_few_pairs(cfg, len(mined), len(mining_records), len(pref_rows), mining))
    random.Random(cfg.seed).shuffle(pairs)
    held = pairs[: max(1, len(pairs) // 5)]
    train_pairs = pairs[len(held):]
    before = preference_accuracy(model, tok, held)
    pair_keys = [p.model_dump_json() for p in train_pairs]
    ckpt = checkpoint_dir("dpo", checkpoint_key(ref, sft_dir, sft_method, cfg, mining_records, pref_rows, train_pairs))
    trainer = preference_trainer(cfg, model, tok, train_pairs, ckpt,
                                 guard_callbacks(model) + mirror_callbacks(ckpt, mirror))
    run = train_policy(trainer, ckpt, out_dir, mirror, f"DPO ({cfg.loss_type})")
    after = preference_accuracy(trainer.model, tok, held)
    save_policy(trainer.model, tok, out_dir)
    trainable, total, seconds, resume = run.trainable, run.total, run.seconds, run.resumed_from
    history = trainer.state.log_history
    metrics = {
        "pairs_mined": len(mined), "pairs_user": len(pref_rows), "pairs_train": len(train_pairs),
        "mining_metric": metric, "mining_min_margin": cfg.min_margin, "mining_near_misses": mining.near,
        "mining_mean_gap": mining.mean_gap, "mining_max_new_tokens": max_new_tokens,
        "pairs_heldout": len(held), "mining_seconds": round(mining_seconds, 1), "train_seconds": round(seconds, 1),
        "heldout_pref_accuracy_before": before["accuracy"], "heldout_pref_accuracy_after": after["accuracy"],
        "heldout_margin_before": before["margin"], "heldout_margin_after": after["margin"],
        "trainable_params": trainable, "total_params": total, "peak_memory_mb": round(peak_memory_mb(), 1),
        "first_loss": loss_span(history)[0], "final_loss": loss_span(history)[1], "resumed_from": resume,
        "steps": trainer.state.global_step,
    }
    return TrainResult(adapter_dir=str(out_dir), history=history, metrics=metrics, seed=cfg.seed,
                       data_hash=run_key(*pair_keys), base_sha256=ref.sha256)
