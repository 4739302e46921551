"""Merge an adapter into its base: a full model dir with tokenizer, chat template and EOS.

    python -m tuneline.merge configs/default.yaml /tmp/dpo-adapter /tmp/merged

The base is always loaded unquantized (a QLoRA adapter is merged into the dequantized base,
never into 4-bit weights). What merges, by sft.method:
- LoRA family (lora, qlora, dora, rslora, adalora) and ia3: folded into the weights (merge_and_unload);
- full, bitfit, galore: the trained dir already is a full model; it is re-saved in `dtype` with the card;
- prefix_tuning, prompt_tuning, xlora: refused with an error. Virtual tokens are inputs, not weights, and
  X-LoRA picks its expert mix per token at run time, so no single set of weights equals the adapter;
  serve those as PEFT adapters (tuneline.peft_methods.load_adapter) instead of a merged model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftConfig

from tuneline.base_model import BaseModelRef, load_model, load_tokenizer
from tuneline.peft_methods import is_adapter_dir, load_adapter, load_full

UNMERGEABLE = {"PREFIX_TUNING": "prefix_tuning", "PROMPT_TUNING": "prompt_tuning", "XLORA": "xlora"}


def merge(ref: BaseModelRef, adapter_dir: str, out_dir: Path, dtype: str = "float16", card: dict | None = None) -> Path:
    tok = load_tokenizer(ref)
    model = _merged(ref, adapter_dir)
    model = model.to(getattr(torch, dtype))
    model.config.use_cache = True
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(model_card(ref, adapter_dir, card or {}))
    return out_dir


def _merged(ref: BaseModelRef, adapter_dir: str):
    if not is_adapter_dir(adapter_dir):
        return load_full(adapter_dir)  # full / bitfit / galore: nothing to fold in
    peft_type = str(PeftConfig.from_pretrained(adapter_dir).peft_type.value)
    if peft_type in UNMERGEABLE:
        raise ValueError(
            f"{adapter_dir}: a {UNMERGEABLE[peft_type]} adapter cannot be merged into the base weights "
            "(virtual tokens / a per-token expert mix are not weights). Serve it as an adapter on the base "
            "(tuneline.peft_methods.load_adapter), or train a mergeable method (lora, dora, ia3, full, ...) "
            "to get a merged model and GGUF exports."
        )
    return load_adapter(load_model(ref), adapter_dir).merge_and_unload()


def model_card(ref: BaseModelRef, adapter_dir: str, card: dict) -> str:
    lines = [
        "# tuneline merged model", "",
        f"- base model: `{ref.source}` (sha256 `{ref.sha256[:16]}`)",
        f"- adapter merged: `{Path(adapter_dir).name}`",
    ]
    lines += [f"- {k}: `{json.dumps(v, default=str)}`" for k, v in card.items()]
    lines += ["", "Made by tuneline (merge_and_unload). Chat template and EOS are in the tokenizer files."]
    return "\n".join(lines) + "\n"
