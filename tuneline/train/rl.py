"""RL from the SFT model (`dpo.loss_type: rloo | grpo`, TRL's RLOOTrainer / GRPOTrainer; TRL 1.16 has no PPO).

    zenml pipeline run pipelines.finetune.finetune -c configs/default.yaml \\
        dpo.loss_type=grpo dpo.reward=task_metric dpo.sft_weight=0 dpo.batch_size=8     # RL from the task metric
    ... reward_model.enabled=true dpo.loss_type=rloo dpo.sft_weight=0                  # RLHF with a reward model

tuneline.train.dpo.train hands these loss types here. The policy is the SFT result, trained as SFT trained it (its
adapter "default"); TRL copies that adapter to a frozen "ref" adapter, so the KL reference (`dpo.beta`) is exactly the
SFT model, as in DPO. Each prompt gets `dpo.num_generations` sampled answers (`dpo.temperature`, at most
data.max_new_tokens tokens: labels are a few tokens, so generation stays cheap on a CPU); an answer's advantage is its
reward against the others of its group (GRPO: normalized by the group's std; RLOO: leave-one-out mean).

The prompts are the mining rows (training rows SFT did not see); `dpo.reward` scores the answers:
- task_metric: evaluate.metric (exact_match, token_f1, rouge*) of the answer against the row's gold answer: the
  on-policy cousin of mined-mistakes DPO, with no reward model;
- reward_model: the model tuneline.train.reward trained on the preference pairs (RLHF's third stage); the user pairs'
  prompts are sampled too.
The saved adapter is the trained "default" only, the same shape as its SFT parent: evaluation and merge load it
like a DPO adapter.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from datasets import Dataset

from tuneline.config import DPOConfig
from tuneline.data.readers import DataError
from tuneline.data.records import messages
from tuneline.eval.scoring import score_items
from tuneline.model.base import BaseModelRef, load_tokenizer
from tuneline.model.precision import use_bf16
from tuneline.train.args import TrainResult, labelled_positions_only, loss_span, trainer_args
from tuneline.train.checkpoints import (
    CheckpointMirror,
    checkpoint_dir,
    code_version,
    data_hash,
    dir_hash,
    mirror_callbacks,
    run_key,
)
from tuneline.train.dpo import load_sft, save_policy, train_policy, user_pairs
from tuneline.train.memory import peak_memory_mb
from tuneline.train.qlora_guard import guard_callbacks


def completion_text(completion) -> str:
    """TRL passes a conversational completion as [{"role": "assistant", "content": ...}], a plain one as text."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def metric_reward(metric: str):
    """A TRL reward function: `metric` of each sampled answer against its prompt's gold answer (the `answer` column)."""

    def reward(completions, answer, **_) -> list[float]:
        return score_items([completion_text(c) for c in completions], list(answer), metric)

    reward.__name__ = metric  # TRL logs it as rewards/<name>/mean
    return reward


def prompts(mining_records: list[dict], pref_rows: list[dict], with_user: bool) -> Dataset:
    """One row per prompt: the mining rows with their gold answers, then (for a reward model, which needs no gold)
    the user pairs' prompts, each prompt once."""
    rows, seen = [], set()
    for conv, gold in [(messages(r, with_answer=False), r["assistant"]) for r in mining_records] + \
                      [(p.prompt, "") for p in (user_pairs(pref_rows) if with_user else [])]:
        key = repr(conv)
        if key not in seen:
            seen.add(key)
            rows.append({"prompt": conv, "answer": gold})
    return Dataset.from_list(rows)


def trl_args(cfg: DPOConfig, out: Path, max_new_tokens: int):
    common = {**trainer_args(cfg, out), "beta": cfg.beta, "num_generations": cfg.num_generations,
              "max_completion_length": max_new_tokens, "temperature": cfg.temperature,
              "remove_unused_columns": False}  # the reward function reads the `answer` column
    if cfg.loss_type == "rloo":
        from trl import RLOOConfig

        return RLOOConfig(**common)
    from trl import GRPOConfig

    return GRPOConfig(**common)


def rl_trainer(cfg: DPOConfig, model, tok, data: Dataset, reward, ckpt: Path, max_new_tokens: int, callbacks: list):
    labelled_positions_only()
    kwargs = {"model": model, "reward_funcs": reward, "args": trl_args(cfg, ckpt, max_new_tokens),
              "train_dataset": data, "processing_class": tok, "callbacks": callbacks}
    if isinstance(reward, torch.nn.Module):  # the reward model reads the answers in the run's chat template
        kwargs["reward_processing_classes"] = copy.deepcopy(tok)  # its own: TRL changes its padding side
    if cfg.loss_type == "rloo":
        from trl import RLOOTrainer

        return RLOOTrainer(**kwargs)
    from trl import GRPOTrainer

    return GRPOTrainer(**kwargs)


def reward_span(history: list[dict]) -> tuple[float | None, float | None]:
    """First and last logged mean reward of the sampled answers."""
    return loss_span(history, "reward")


def train(ref: BaseModelRef, sft_dir: str, sft_method: str, mining_records: list[dict], pref_rows: list[dict],
          cfg: DPOConfig, out_dir: Path, max_new_tokens: int = 12, mirror: CheckpointMirror | None = None,
          metric: str = "exact_match", reward_dir: str | None = None) -> TrainResult:
    """RL from the SFT result at `sft_dir`; `reward_dir`: the reward model (dpo.reward: reward_model)."""
    use_model = cfg.reward == "reward_model"
    if use_model and not reward_dir:
        raise DataError(f"dpo.loss_type {cfg.loss_type} with dpo.reward: reward_model needs the trained reward model "
                        "(the pipeline's train_reward step, reward_model.enabled: true), and none was given: set "
                        "reward_model.enabled: true, or dpo.reward: task_metric")
    data = prompts(mining_records, pref_rows, with_user=use_model)
    if len(data) < 2:
        raise DataError(f"{cfg.loss_type} samples answers to the mining rows and got {len(data)} prompts (it needs 2): "
                        "raise data.mining_rows where the training file has rows to spare, or set dpo.enabled: false")
    tok = load_tokenizer(ref)
    model = load_sft(ref, sft_dir, sft_method, trainable=True, bf16=use_bf16(cfg.bf16))
    if use_model:
        from tuneline.train.reward import load_reward_model

        reward = load_reward_model(ref, reward_dir)
        reward_key = dir_hash(reward_dir)
    else:
        reward, reward_key = metric_reward(metric), metric
    ckpt = checkpoint_dir(cfg.loss_type, run_key(ref.training_key, dir_hash(sft_dir), sft_method, reward_key,
                                                 code_version("tuneline.train.rl"), cfg.model_dump_json(),
                                                 str(max_new_tokens), data_hash(data.to_list())))
    trainer = rl_trainer(cfg, model, tok, data, reward, ckpt, max_new_tokens,
                         guard_callbacks(model) + mirror_callbacks(ckpt, mirror))
    run = train_policy(trainer, ckpt, out_dir, mirror, f"RL ({cfg.loss_type})")
    save_policy(trainer.model, tok, out_dir)
    trainable, total, seconds, resume = run.trainable, run.total, run.seconds, run.resumed_from
    history = trainer.state.log_history
    first, last = reward_span(history)
    metrics = {
        "rl_reward": cfg.reward, "rl_metric": metric if not use_model else None, "rl_prompts": len(data),
        "rl_num_generations": cfg.num_generations, "rl_max_new_tokens": max_new_tokens,
        "reward_first": first, "reward_last": last, "train_seconds": round(seconds, 1),
        "trainable_params": trainable, "total_params": total, "peak_memory_mb": round(peak_memory_mb(), 1),
        "first_loss": loss_span(history)[0], "final_loss": loss_span(history)[1], "resumed_from": resume,
        "steps": trainer.state.global_step,
    }
    return TrainResult(adapter_dir=str(out_dir), history=history, metrics=metrics, seed=cfg.seed,
                       data_hash=data_hash(data.to_list()), base_sha256=ref.sha256)
