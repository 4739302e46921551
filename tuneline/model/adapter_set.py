"""Several adapters held on one base model in memory, switched (or stacked) per request: PEFT's
load_adapter / set_adapter behind a small API.

    adapters = AdapterSet.load(ref, {"banking": "runs/banking/sft", "legal": "runs/legal/sft"})
    model = adapters.use("banking")           # generate / score with `model`; use("legal") switches in place
    adapters.use("banking", "legal")          # stacked: both deltas at once (LoRA), as llama.cpp's --lora A --lora B
    with adapters.base() as model: ...        # the base alone, adapters disabled

The base's weights are loaded once and never changed (no merge), so switching costs nothing and each task's
answers are exactly its adapter's. The adapters must be one PEFT type (PEFT holds one kind per model) and not
X-LoRA (it mixes its own experts); only LoRA-family adapters stack. Served from GGUF instead, the same layout is a
base GGUF with GGUF LoRA adapters: tuneline.export.gguf_lora.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from peft import PeftConfig, PeftModel

from tuneline.model.adapters import load_adapter

STACKABLE = ("LORA",)


class AdapterSet:
    def __init__(self, base, adapters: dict[str, str | Path]) -> None:
        """`base`: a loaded transformers model (not yet a PeftModel); `adapters`: name -> PEFT adapter dir."""
        if not adapters:
            raise ValueError("AdapterSet needs at least one adapter: {name: adapter dir}")
        self.kinds = {name: _kind(path) for name, path in adapters.items()}
        if len(set(self.kinds.values())) > 1:
            raise ValueError(f"adapters of different PEFT types cannot share one base model: {self.kinds}; "
                             "load each type in its own AdapterSet")
        self.model: PeftModel = base
        for name, path in adapters.items():
            self.model = load_adapter(self.model, path, adapter_name=name)
        self.model.eval()
        self.use(next(iter(adapters)))

    @classmethod
    def load(cls, ref, adapters: dict[str, str | Path], dtype: str = "float32") -> AdapterSet:
        from tuneline.model.base import load_model

        return cls(load_model(ref, dtype), adapters)

    @property
    def names(self) -> list[str]:
        return list(self.kinds)

    @property
    def active(self) -> list[str]:
        active = self.model.base_model.active_adapter
        return [active] if isinstance(active, str) else list(active)

    def use(self, *names: str) -> PeftModel:
        """Make `names` the active adapters (one: a switch; several: stacked) and return the model."""
        unknown = [n for n in names if n not in self.kinds]
        if not names or unknown:
            raise ValueError(f"unknown adapters {unknown or '(none given)'}: this set holds {self.names}")
        if len(names) == 1:
            self.model.set_adapter(names[0], inference_mode=True)
        elif self.kinds[names[0]] not in STACKABLE:
            raise ValueError(f"{self.kinds[names[0]].lower()} adapters cannot be stacked; use one at a time")
        else:
            self.model.base_model.set_adapter(list(names), inference_mode=True)
        return self.model

    @contextmanager
    def base(self):
        """The base model alone inside the block (PEFT's disable_adapter); the active adapters come back after."""
        with self.model.disable_adapter():
            yield self.model


def _kind(path: str | Path) -> str:
    conf = PeftConfig.from_pretrained(path)
    kind = str(conf.peft_type.value)
    if kind == "XLORA":
        raise ValueError(f"{path}: an X-LoRA adapter mixes its own experts per token; load it alone "
                         "(tuneline.model.adapters.load_adapter), not in an AdapterSet")
    return kind
