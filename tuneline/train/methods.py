"""What `sft.method` trains, how it is saved, and how the result is loaded again.

    .venv/bin/pytest -q tests/integration/test_methods.py      # every method on the tiny model (loss, frozen base, reload)

Two kinds of result:
- PEFT adapters, saved as a small adapter dir (adapter_config.json + weights) on top of the base:
  lora, qlora (LoRA on an NF4 base), dora (LoRA plus a learned magnitude per output), rslora (alpha/sqrt(r)
  scaling), adalora (SVD-form LoRA whose rank budget moves to the layers that matter), ia3 (learned
  scaling vectors), prefix_tuning (trained key/value prefixes in every layer), prompt_tuning (trained input
  embeddings), xlora (a gate that mixes frozen LoRA experts per token).
- Full-weight methods, saved as a full model dir (no adapter_config.json): full (every weight), bitfit (only
  the bias terms; models without biases, like Llama/SmolLM2, are refused), galore (every weight, Adam on
  rank-r projections of the gradients of the target linear layers: optimizer state of a LoRA-sized model).

Whether a dir is an adapter or a full model is read from the dir itself (`is_adapter_dir`), so
evaluate, merge and DPO need no method argument to load it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PeftType,
    PrefixTuningConfig,
    PromptTuningConfig,
    XLoraConfig,
)
from transformers import Trainer, TrainerCallback
from trl import SFTTrainer

from tuneline.config import FULL_WEIGHT_METHODS, LORA_FAMILY, SFTConfig

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
MERGEABLE = (*LORA_FAMILY, "ia3", *FULL_WEIGHT_METHODS)  # prompt methods and xlora have no weights to fold in


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def target_modules(cfg: SFTConfig) -> list[str] | str:
    """Module names for the preset; 'all-linear' stays a string where PEFT resolves it (never lm_head)."""
    if cfg.target_modules == "attention":
        return ATTENTION
    if cfg.target_modules == "all-linear" and (cfg.top_layers or cfg.method in ("ia3", "galore")):
        return ATTENTION + MLP  # PEFT needs names when layers are restricted; ia3/galore need them to split/target
    return cfg.target_modules


def lora_config(cfg: SFTConfig, num_layers: int, total_steps: int | None = None) -> LoraConfig:
    """LoRA and its variants: one config class, a flag per variant (adalora: its own subclass)."""
    layers = list(range(max(num_layers - cfg.top_layers, 0), num_layers)) if cfg.top_layers else None
    common = dict(lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target_modules(cfg),
                  layers_to_transform=layers, task_type="CAUSAL_LM")
    if cfg.method == "adalora":
        return adalora_config(cfg, common, total_steps)
    return LoraConfig(r=cfg.r, use_dora=cfg.method == "dora", use_rslora=cfg.method == "rslora", **common)


def adalora_config(cfg: SFTConfig, common: dict, total_steps: int | None) -> AdaLoraConfig:
    """AdaLoRA starts at 1.5x the rank and prunes to `r` on average; its schedule needs the step count.

    Budget schedule: tinit warm-up steps at full rank, then ranks are pruned every step, and the last
    tfinal steps train with the final allocation (which must be reached, or the pattern is never frozen).
    """
    if not total_steps:
        raise ValueError("adalora needs the number of optimizer steps (total_steps) for its rank schedule")
    tinit = total_steps // 10
    tfinal = min(max(1, total_steps // 5), total_steps - tinit - 1)
    return AdaLoraConfig(init_r=max(cfg.r * 3 // 2, cfg.r + 1), target_r=cfg.r, total_step=total_steps,
                         tinit=tinit, tfinal=max(tfinal, 0), deltaT=1, **common)


def peft_config(cfg: SFTConfig, num_layers: int, hidden_size: int | None = None,
                total_steps: int | None = None) -> PeftConfig | None:
    """The PEFT config for `cfg.method`, or None for full-weight methods (no adapter)."""
    match cfg.method:
        case "lora" | "qlora" | "dora" | "rslora" | "adalora":
            return lora_config(cfg, num_layers, total_steps)
        case "ia3":
            targets = target_modules(cfg)
            # IA3 scales the *input* of feed-forward layers (the MLP activation, as in the paper) and the
            # output of the others; feedforward_modules must be a subset of the targets.
            ff = [m for m in targets if m == "down_proj"]
            return IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")
        case "prefix_tuning":
            return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")
        case "prompt_tuning":
            return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")
        case "xlora":
            # Keys must be "0", "1", ...: PEFT loads expert i under the name str(i) but activates the dict keys.
            experts = {str(i): str(Path(p).expanduser().resolve()) for i, p in enumerate(cfg.xlora_experts)}
            # depth 1: a linear gate (hidden_size -> one weight per expert) on the last hidden state of a
            # first, adapter-free pass; the experts stay frozen. use_cache must be off (X-LoRA checks it).
            return XLoraConfig(hidden_size=hidden_size, adapters=experts, xlora_depth=1, task_type="CAUSAL_LM")
        case "full" | "bitfit" | "galore":
            return None


def total_steps(n_rows: int, cfg: SFTConfig) -> int:
    """Optimizer steps the Trainer will run (its own arithmetic: batches per epoch, then accumulation)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    batches = math.ceil(n_rows / cfg.batch_size)
    per_epoch = max(batches // cfg.grad_accum + int(batches % cfg.grad_accum > 0), 1)
    return max(math.ceil(cfg.epochs * per_epoch), 1)


def set_trainable(model, method: str) -> None:
    """Full-weight methods: which of the model's own weights train (adapters freeze through PEFT)."""
    if method == "bitfit":
        biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
        if not biases:
            raise ValueError(
                f"method bitfit trains only bias terms, and {type(model).__name__} has none (Llama-family models "
                "such as SmolLM2 are built without biases). Use a model with biases (e.g. Qwen2: q/k/v biases), "
                "or ia3 for an adapter of similar size."
            )
        for n, p in model.named_parameters():
            p.requires_grad = n.endswith(".bias")
    elif method in ("full", "galore"):
        for p in model.parameters():
            p.requires_grad = True


def optimizer_args(cfg: SFTConfig) -> dict:
    """GaLore is an optimizer (galore-torch through transformers): the Trainer builds it from these."""
    if cfg.method != "galore":
        return {}
    return dict(optim="galore_adamw", optim_target_modules=target_modules(cfg),
                optim_args=f"rank={cfg.r},update_proj_gap=200,scale=0.25,proj_type=std")


def can_resume(cfg: SFTConfig) -> bool:
    """Whether a re-run may resume from this method's last checkpoint (if not, none are written).

    galore: the optimizer state holds GaLoreProjector objects, which the Trainer's torch.load(weights_only=True)
    refuses unless they are allow-listed. adalora: a checkpoint holds only the ranks kept so far, which do
    not load back into the full-rank model being trained, and the rank allocator's importance scores are
    not checkpointed at all, so a re-run starts over. xlora: the Trainer checkpoints through PEFT's X-LoRA
    save (no gate weights, a base-model copy per expert) and the resumed optimizer groups do not match.
    """
    if cfg.method == "galore":
        import torch
        from galore_torch.galore_projector import GaLoreProjector

        torch.serialization.add_safe_globals([GaLoreProjector])
    return cfg.method not in ("adalora", "xlora")


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


def trainer_class(cfg: SFTConfig) -> type[SFTTrainer]:
    return ModelLossSFTTrainer if cfg.method in ("adalora", "xlora") else SFTTrainer


def callbacks(cfg: SFTConfig) -> list[TrainerCallback]:
    return [AdaLoraBudget()] if cfg.method == "adalora" else []


def save(model, out_dir: Path, cfg: SFTConfig) -> None:
    """Adapter dir or full model dir (an xlora dir also holds copies of its experts)."""
    if cfg.method in FULL_WEIGHT_METHODS:
        model.config.use_cache = True  # off for training; whoever generates from this dir wants it on
    if cfg.method == "xlora":
        _save_xlora(model, out_dir)
    else:
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


def load_full(path: str | Path, method: str = "full", trainable: bool = False):
    """A full-weight method's model dir; trainable as `method` trained it (bitfit: biases only)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    if trainable:
        set_trainable(model, method)
    else:
        model.requires_grad_(False)
    return model


def load_adapter(base, path: str | Path, adapter_name: str = "default", trainable: bool = False) -> PeftModel:
    """`base` with the adapter at `path`; if `base` is already a PeftModel the adapter goes in beside the others."""
    path = Path(path)
    config = PeftConfig.from_pretrained(path)
    if isinstance(config, XLoraConfig):
        # The saved config names its experts by subdir of the adapter dir (see `_save_xlora`).
        config.adapters = {name: str(path / sub) for name, sub in config.adapters.items()}
        config.inference_mode = not trainable
        base.config.use_cache = False  # X-LoRA refuses a model with the KV cache on (it runs two passes per step)
    else:
        config = None
    if isinstance(base, PeftModel):
        base.load_adapter(path, adapter_name=adapter_name, is_trainable=trainable)
        return base
    return PeftModel.from_pretrained(base, path, adapter_name=adapter_name, is_trainable=trainable, config=config)


def align_logits(model: PeftModel) -> PeftModel:
    """Prompt tuning prepends its virtual tokens to the input, and PEFT returns logits for them too; code that
    lines logits up with its input ids (perplexity, lm-eval) needs them dropped. A forward hook does that
    whenever a prompt-tuning adapter is active (generation goes through PEFT's generate, not this forward)."""
    if getattr(model, "_tuneline_aligned", False):
        return model

    def drop_virtual(module, args, output):
        conf = module.active_peft_config
        if conf.peft_type == PeftType.PROMPT_TUNING and getattr(output, "logits", None) is not None:
            output.logits = output.logits[:, conf.num_virtual_tokens:]
        return output

    model.register_forward_hook(drop_virtual)
    model._tuneline_aligned = True
    return model
