"""Bottleneck adapters (Houlsby / Pfeiffer "adapter layers"), as a PEFT LoRA custom layer.

    .venv/bin/pytest -q tests/integration/test_bottleneck_adapter.py     # trains, reloads, base-equal at init, refusals

`sft.method: bottleneck` inserts, after the attention and/or the MLP sublayer of every decoder layer, a small
residual block on that sublayer's output h:  h + up(relu(down(h))),  down: hidden -> bottleneck_size,
up: bottleneck_size -> hidden, up zero-initialised, so an untrained adapter is exactly the base model.
Houlsby places one after attention and one after the MLP (`bottleneck_places: [attention, mlp]`), Pfeiffer
only after the MLP (`[mlp]`).

Why not AdapterHub's `adapters`: its latest release (1.3.0) requires transformers ~=4.57, and tuneline runs
transformers 5. Why PEFT underneath: PEFT has no bottleneck method, but LoRA accepts custom layer classes
for module types it does not know (`LoraConfig._register_custom_module`). A bottleneck block wrapping a whole
sublayer is such a layer: its `lora_A` / `lora_B` are the down / up projections. PEFT then gives everything a
LoRA adapter has (save_pretrained to adapter_config.json + adapter_model.safetensors, several adapters on one
base, set_adapter, TRL's frozen "ref" adapter for DPO, only the adapter trainable).

The saved adapter_config.json is a LoRA config whose `target_modules` is a regex over the sublayer names that
opens with the regex comment `(?#tuneline-bottleneck)`: that comment marks the dir as a bottleneck adapter
(tuneline.model.adapters.load_adapter registers the custom layer again before loading it), and it matches
nothing, so the regex selects the same sublayers. Plain PEFT cannot load the dir without that registration.

Not mergeable: the block is a nonlinear function of the sublayer's output, not a weight change, so no base
weight equals it; merge and GGUF export refuse it (MERGE_REFUSAL) and the model is served as base + adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import LoraLayer
from torch import nn

MARK = "(?#tuneline-bottleneck)"
# Sublayer module names per place (Llama, Qwen2, Gemma, Mistral... name them so).
PLACES = {"attention": "self_attn", "mlp": "mlp"}
MERGE_REFUSAL = ("a bottleneck adapter is not a weight change: it adds layers (a down-projection, "
                 "a ReLU and an up-projection after each attention / MLP sublayer), a nonlinear function that no "
                 "change of the existing weights reproduces, and GGUF has no place for it either. Serve it as an "
                 "adapter on the base (tuneline.model.adapters.load_adapter), or train a mergeable method "
                 "(lora, dora, ia3, full, ...) to get a merged model and GGUF exports")


def refuse(path, what: str = "merged") -> None:
    """Raise MERGE_REFUSAL if `path` is a bottleneck adapter dir (merge and GGUF export call this first)."""
    conf = Path(path) / "adapter_config.json"
    if conf.is_file() and is_bottleneck(json.loads(conf.read_text()).get("target_modules")):
        raise ValueError(f"{path}: cannot be {what}: {MERGE_REFUSAL}")


def targets(places: list[str]) -> str:
    """The `target_modules` regex: the marker, then the chosen sublayers of every decoder layer."""
    names = "|".join(PLACES[p] for p in places)
    return rf"{MARK}.*\.layers\.\d+\.({names})"


def is_bottleneck(config) -> bool:
    """A PEFT config (or its target_modules) that tuneline saved for a bottleneck adapter."""
    t = getattr(config, "target_modules", config)
    return isinstance(t, str) and t.startswith(MARK)


def registered(config: LoraConfig) -> LoraConfig:
    """`config` with the bottleneck layer registered for any sublayer its targets select (needed before PEFT
    builds or loads the adapter; the registration is not saved in adapter_config.json)."""
    config._register_custom_module({nn.Module: BottleneckLayer})
    return config


def bottleneck_config(size: int, places: list[str], dropout: float = 0.0) -> LoraConfig:
    """The PEFT config of a new bottleneck adapter: rank = bottleneck size, alpha = rank (scale 1, as Houlsby)."""
    return registered(LoraConfig(r=size, lora_alpha=size, lora_dropout=dropout, target_modules=targets(places),
                                 init_lora_weights=True, task_type="CAUSAL_LM"))


class BottleneckLayer(nn.Module, LoraLayer):
    """A sublayer (attention or MLP) followed by h + up(relu(down(h))) for each active adapter."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int, lora_alpha: int,
                 **kwargs) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        """Both projections work on the sublayer's output (PEFT reads this for the lora_A / lora_B shapes)."""
        return _hidden_size(module), _hidden_size(module)

    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """`adapter_names`: one adapter per batch row (PEFT's mixed-batch inference; "__base__" is no adapter)."""
        out = self.base_layer(*args, **kwargs)
        if self.disable_adapters or self.merged:
            return out
        h = out[0] if isinstance(out, tuple) else out
        if adapter_names is None:
            for name in self.active_adapters:
                h = h + self._block(name, h)
        else:
            rows = torch.tensor([hash(n) for n in adapter_names], device=h.device)
            add = torch.zeros_like(h)
            for name in set(adapter_names) & set(self.lora_A):
                pick = rows == hash(name)
                add[pick] = self._block(name, h[pick])
            h = h + add
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def _block(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """up(relu(down(h))) of adapter `name` (zero where it has none on this sublayer)."""
        if name not in self.lora_A:
            return torch.zeros_like(h)
        down, up = self.lora_A[name], self.lora_B[name]
        x = self.lora_dropout[name](h.to(down.weight.dtype))
        return (up(torch.relu(down(x))) * self.scaling[name]).to(h.dtype)

    def merge(self, *args, **kwargs) -> None:
        raise ValueError(MERGE_REFUSAL)

    def get_delta_weight(self, adapter_name: str):
        raise ValueError(MERGE_REFUSAL)

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


def _hidden_size(sublayer: nn.Module) -> int:
    """The width of the sublayer's output: the out_features of its last linear layer (o_proj, down_proj)."""
    linears = [m for m in sublayer.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"bottleneck adapter: {type(sublayer).__name__} has no linear layer to read its width from")
    return linears[-1].out_features

