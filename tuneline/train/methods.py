"""What each `sft.method` trains, how, and how it is saved: one `Method` record per method.

    m = method_for(cfg.sft)       # everything sft.train asks about the method, in one place
    peft = m.peft_config(cfg.sft, num_layers, hidden_size, total_steps)

    .venv/bin/pytest -q tests/integration/test_methods.py      # every method on the tiny model (loss, frozen base, reload)

Two kinds of result:
- PEFT adapters, saved as a small adapter dir (adapter_config.json + weights) on top of the base:
  lora, qlora (LoRA on an NF4 base), dora (LoRA plus a learned magnitude per output), rslora (alpha/sqrt(r)
  scaling), adalora (SVD-form LoRA whose rank budget moves to the layers that matter), ia3 (learned
  scaling vectors), prefix_tuning (trained key/value prefixes in every layer), prompt_tuning (trained input
  embeddings), xlora (a gate that mixes frozen LoRA experts per token), bottleneck (Houlsby/Pfeiffer adapter
  layers after attention / MLP, as a PEFT LoRA custom layer: tuneline/train/bottleneck.py; not mergeable).
- Full-weight methods, saved as a full model dir (no adapter_config.json): full (every weight), bitfit (only
  the bias terms; models without biases, like Llama/SmolLM2, are refused), galore (every weight, Adam on
  rank-r projections of the gradients of the target linear layers: optimizer state of a LoRA-sized model).

Loading a result again needs no method: tuneline/model/adapters.py reads the kind from the dir.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    XLoraConfig,
)
from transformers import Trainer, TrainerCallback
from trl import SFTTrainer

from tuneline.config import FULL_WEIGHT_METHODS, NO_DPO_METHODS, UNMERGEABLE_METHODS, SFTConfig
from tuneline.train.bottleneck import bottleneck_config
from tuneline.train.long_context import EMBEDDINGS_AND_NORMS
from tuneline.train.targets import peft_targets

# (cfg, num_layers, hidden_size, total_steps) -> the PEFT config, or None for full-weight methods.
PeftBuilder = Callable[[SFTConfig, int, int | None, int | None], PeftConfig | None]


# --- PEFT configs ----------------------------------------------------------------------------------


def lora_config(cfg: SFTConfig, num_layers: int, dora: bool = False, rslora: bool = False) -> LoraConfig:
    """LoRA and its dora/rslora variants: one config class, a flag per variant."""
    return LoraConfig(r=cfg.r, use_dora=dora, use_rslora=rslora, **_lora_common(cfg, num_layers))


def _lora_common(cfg: SFTConfig, num_layers: int) -> dict:
    layers = list(range(max(num_layers - cfg.top_layers, 0), num_layers)) if cfg.top_layers else None
    # LongLoRA trains the embeddings and the norms beside LoRA ("norm" ends every norm's name: PEFT matches suffixes).
    long = cfg.long_context and cfg.long_context.trainable_embeddings_and_norms
    return dict(lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=peft_targets(cfg),
                layers_to_transform=layers, task_type="CAUSAL_LM", modules_to_save=EMBEDDINGS_AND_NORMS if long else None)


def adalora_config(cfg: SFTConfig, num_layers: int, total_steps: int | None) -> AdaLoraConfig:
    """AdaLoRA starts at 1.5x the rank and prunes to `r` on average; its schedule needs the step count.

    Budget schedule: tinit warm-up steps at full rank, then ranks are pruned every step, and the last
    tfinal steps train with the final allocation (which must be reached, or the pattern is never frozen).
    """
    if not total_steps:
        raise ValueError("adalora needs the number of optimizer steps (total_steps) for its rank schedule")
    tinit = total_steps // 10
    tfinal = min(max(1, total_steps // 5), total_steps - tinit - 1)
    return AdaLoraConfig(init_r=max(cfg.r * 3 // 2, cfg.r + 1), target_r=cfg.r, total_step=total_steps,
                         tinit=tinit, tfinal=max(tfinal, 0), deltaT=1, **_lora_common(cfg, num_layers))


def _lora(cfg, num_layers, hidden_size=None, total_steps=None, **variant) -> LoraConfig:
    return lora_config(cfg, num_layers, **variant)


def _adalora(cfg, num_layers, hidden_size=None, total_steps=None) -> AdaLoraConfig:
    return adalora_config(cfg, num_layers, total_steps)


def _ia3(cfg, num_layers, hidden_size=None, total_steps=None) -> IA3Config:
    targets = peft_targets(cfg, named=True)
    # IA3 scales the *input* of feed-forward layers (the MLP activation, as in the paper) and the
    # output of the others; feedforward_modules must be a subset of the targets.
    ff = [m for m in targets if m == "down_proj"]
    return IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")


def _prefix(cfg, num_layers, hidden_size=None, total_steps=None) -> PrefixTuningConfig:
    return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")


def _prompt(cfg, num_layers, hidden_size=None, total_steps=None) -> PromptTuningConfig:
    return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")


def _xlora(cfg, num_layers, hidden_size=None, total_steps=None) -> XLoraConfig:
    # Keys must be "0", "1", ...: PEFT loads expert i under the name str(i) but activates the dict keys.
    experts = {str(i): str(Path(p).expanduser().resolve()) for i, p in enumerate(cfg.xlora_experts)}
    # depth 1: a linear gate (hidden_size -> one weight per expert) on the last hidden state of a
    # first, adapter-free pass; the experts stay frozen. use_cache must be off (X-LoRA checks it).
    return XLoraConfig(hidden_size=hidden_size, adapters=experts, xlora_depth=1, task_type="CAUSAL_LM")


def _bottleneck(cfg, num_layers, hidden_size=None, total_steps=None) -> LoraConfig:
    return bottleneck_config(cfg.bottleneck_size, cfg.bottleneck_places, cfg.dropout)


def _no_adapter(cfg, num_layers, hidden_size=None, total_steps=None) -> None:
    return None


# --- which weights train, the optimizer ------------------------------------------------------------


def _frozen_by_peft(model) -> None:
    """Adapters: PEFT freezes the base and makes only the adapter trainable."""


def _all_weights(model) -> None:
    for p in model.parameters():
        p.requires_grad = True


def _biases_only(model) -> None:
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise ValueError(
            f"method bitfit trains only bias terms, and {type(model).__name__} has none (Llama-family models "
            "such as SmolLM2 are built without biases). Use a model with biases (e.g. Qwen2: q/k/v biases), "
            "or ia3 for an adapter of similar size."
        )
    for n, p in model.named_parameters():
        p.requires_grad = n.endswith(".bias")


def _adamw(cfg: SFTConfig) -> dict:
    return {}


def _galore(cfg: SFTConfig) -> dict:
    """GaLore is an optimizer (galore-torch through transformers): the Trainer builds it from these.

    Its optimizer state holds GaLoreProjector objects, which the Trainer's torch.load(weights_only=True)
    refuses on resume unless they are allow-listed."""
    import torch
    from galore_torch.galore_projector import GaLoreProjector

    torch.serialization.add_safe_globals([GaLoreProjector])
    return dict(optim="galore_adamw", optim_target_modules=peft_targets(cfg, named=True),
                optim_args=f"rank={cfg.r},update_proj_gap=200,scale=0.25,proj_type=std")


# --- trainer -----------------------------------------------------------------------------------------


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA reallocates ranks from the gradients: PEFT wants update_and_allocate after the optimizer
    step and before zero_grad, which is exactly when the Trainer calls on_optimizer_step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


class ModelLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is the model's own (transformers' Trainer.compute_loss) instead of TRL's fused LM head.

    adalora adds its orthogonality penalty to the model's loss, which TRL's fused head never reads;
    xlora's gate runs a plain forward for hidden states, which the fused head doesn't return.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        if model.training:  # TRL counts tokens (tokens/s) in the compute_loss this replaces: count them the same way
            mask = inputs.get("attention_mask")
            self._total_train_tokens += int(mask.sum()) if mask is not None else inputs["position_ids"].size(1)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


# --- saving ------------------------------------------------------------------------------------------


def _save_adapter(model, out_dir: Path) -> None:
    model.save_pretrained(out_dir)


def _save_full(model, out_dir: Path) -> None:
    model.config.use_cache = True  # off for training; whoever generates from this dir wants it on
    model.save_pretrained(out_dir)


def _save_xlora(model, out_dir: Path) -> None:
    """X-LoRA's own save is broken in PEFT 0.21.2, so tuneline writes the dir: the gate weights, the config,
    and a copy of each expert under experts/<name>, so the dir is self-contained wherever it is moved.

    PEFT names the experts "0", "1", ...; its adapter-name filter then drops every key containing ".0."
    (the gate's `layers.0`), and each expert's subdir gets a copy of the whole base model.
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    conf = model.peft_config["default"]
    gate = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "internal_xlora_classifier" in k}
    save_file(gate, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    for name, src in conf.adapters.items():
        shutil.copytree(src, out_dir / "experts" / name, dirs_exist_ok=True)
    conf.save_pretrained(out_dir)
    conf_path = out_dir / "adapter_config.json"
    saved = json.loads(conf_path.read_text())
    saved["adapters"] = {name: f"experts/{name}" for name in conf.adapters}  # resolved against the dir at load
    conf_path.write_text(json.dumps(saved, indent=2))


# --- the records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """Everything that depends on `sft.method`.

    resumable: whether a re-run may resume from the last checkpoint (if not, none are written). adalora: a
    checkpoint holds only the ranks kept so far, which do not load back into the full-rank model being
    trained, and the rank allocator's importance scores are not checkpointed at all. xlora: the Trainer
    checkpoints through PEFT's X-LoRA save (no gate weights, a base-model copy per expert) and the resumed
    optimizer groups do not match.
    """

    name: str
    peft_config: PeftBuilder
    set_trainable: Callable[[object], None] = _frozen_by_peft
    optimizer_args: Callable[[SFTConfig], dict] = _adamw
    resumable: bool = True
    trainer: type[SFTTrainer] = SFTTrainer
    callback_types: tuple[type[TrainerCallback], ...] = ()
    save: Callable[[object, Path], None] = _save_adapter
    quantize_4bit: bool = False  # load the base in NF4 (bitsandbytes) and prepare it for k-bit training

    @property
    def full_weight(self) -> bool:
        """Saved as a full model dir (no adapter)."""
        return self.name in FULL_WEIGHT_METHODS

    @property
    def mergeable(self) -> bool:
        """Weights to fold into the base: not prompt methods (virtual tokens), xlora (a per-token gate) or
        bottleneck (added layers)."""
        return self.name not in UNMERGEABLE_METHODS

    @property
    def dpo_able(self) -> bool:
        """DPO can continue from this result (config.py's NO_DPO_METHODS says why not)."""
        return self.name not in NO_DPO_METHODS

    def callbacks(self) -> list[TrainerCallback]:
        return [cb() for cb in self.callback_types]


_FULL = dict(peft_config=_no_adapter, set_trainable=_all_weights, save=_save_full)
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", _lora),
    Method("qlora", _lora, quantize_4bit=True),
    Method("dora", partial(_lora, dora=True)),
    Method("rslora", partial(_lora, rslora=True)),
    Method("adalora", _adalora, resumable=False, trainer=ModelLossSFTTrainer, callback_types=(AdaLoraBudget,)),
    Method("ia3", _ia3),
    Method("prefix_tuning", _prefix),
    Method("prompt_tuning", _prompt),
    Method("xlora", _xlora, resumable=False, trainer=ModelLossSFTTrainer, save=_save_xlora),
    Method("bottleneck", _bottleneck),
    Method("full", **_FULL),
    Method("bitfit", **{**_FULL, "set_trainable": _biases_only}),
    Method("galore", **_FULL, optimizer_args=_galore),
)}


def method_for(cfg: SFTConfig | str) -> Method:
    """The record of `cfg.method` (or of a method name, as an adapter records it)."""
    name = cfg if isinstance(cfg, str) else cfg.method
    if name not in METHODS:
        valid = f"valid: {', '.join(METHODS)}"
        hint = "resolve it first (tuneline.train.plan.resolve_method)" if name == "auto" else valid
        raise ValueError(f"sft.method {name!r} has no training record: {hint}")
    return METHODS[name]


def total_steps(n_rows: int, cfg: SFTConfig) -> int:
    """Optimizer steps the Trainer will run (its own arithmetic: batches per epoch, then accumulation)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    batches = math.ceil(n_rows / cfg.batch_size)
    per_epoch = max(batches // cfg.grad_accum + int(batches % cfg.grad_accum > 0), 1)
    return max(math.ceil(cfg.epochs * per_epoch), 1)
