"""Loading a trained result again: a PEFT adapter dir on a base model, or a full model dir.

    model = load_adapter(load_model(ref), "out/sft") if is_adapter_dir("out/sft") else load_full("out/sft")

Whether a dir is an adapter or a full model is read from the dir itself, so evaluate, merge and DPO
need no method argument to load it. A bottleneck adapter (tuneline/train/bottleneck.py) is a PEFT LoRA dir
with a custom layer: its config is recognised here and the layer registered before PEFT builds it.
PEFT (and torch) are imported by the functions that load: a pipeline that only names these functions, or a
fully cached run, never pays for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import PeftModel


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_full(path: str | Path, trainable: bool = False):
    """A full-weight method's model dir, fp32. trainable: every weight requires grad (a method that trains
    fewer, like bitfit, narrows it with its `Method.set_trainable`); else the model is frozen."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    if not trainable:
        model.requires_grad_(False)
    return model


def load_adapter(base, path: str | Path, adapter_name: str = "default", trainable: bool = False) -> PeftModel:
    """`base` with the adapter at `path`; if `base` is already a PeftModel the adapter goes in beside the others."""
    from peft import PeftConfig, PeftModel, XLoraConfig

    from tuneline.train.bottleneck import is_bottleneck, registered

    path = Path(path)
    config = PeftConfig.from_pretrained(path)
    if is_bottleneck(config):
        config = registered(config)
        config.inference_mode = not trainable
        if isinstance(base, PeftModel):  # PEFT's load_adapter would read the config again, unregistered
            base.add_adapter(adapter_name, config)
            if trainable:
                base.set_requires_grad(adapter_name)
    elif isinstance(config, XLoraConfig):
        # The saved config names its experts by subdir of the adapter dir (see train/methods.py `_save_xlora`).
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
    from peft import PeftType

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
