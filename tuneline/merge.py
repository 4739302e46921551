"""Merge an adapter into its base: a full model dir with tokenizer, chat template and EOS.

    python -m tuneline.merge configs/default.yaml /tmp/dpo-adapter /tmp/merged

The base is always loaded unquantized (a QLoRA adapter is merged into the dequantized base,
never into 4-bit weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from tuneline.base_model import BaseModelRef, load_model, load_tokenizer


def merge(ref: BaseModelRef, adapter_dir: str, out_dir: Path, dtype: str = "float16", card: dict | None = None) -> Path:
    tok = load_tokenizer(ref)
    model = PeftModel.from_pretrained(load_model(ref), adapter_dir).merge_and_unload()
    model = model.to(getattr(torch, dtype))
    model.config.use_cache = True
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(model_card(ref, adapter_dir, card or {}))
    return out_dir


def model_card(ref: BaseModelRef, adapter_dir: str, card: dict) -> str:
    lines = [
        "# tuneline merged model", "",
        f"- base model: `{ref.source}` (sha256 `{ref.sha256[:16]}`)",
        f"- adapter merged: `{Path(adapter_dir).name}`",
    ]
    lines += [f"- {k}: `{json.dumps(v, default=str)}`" for k, v in card.items()]
    lines += ["", "Made by tuneline (merge_and_unload). Chat template and EOS are in the tokenizer files."]
    return "\n".join(lines) + "\n"
