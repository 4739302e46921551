"""Merge an adapter into its base: a full model dir with tokenizer, chat template and EOS.

    tuneline merge configs/default.yaml /tmp/dpo-adapter --out /tmp/merged

With `merge.combination` (linear, ties, dare_linear, dare_ties, magnitude_prune) the adapter is first
combined with `merge.adapters`: each layer's full weight deltas go through PEFT's merge_utils and the
result is added to the base, exactly (no SVD back to a low-rank adapter). A negative `merge.weights` entry
subtracts that adapter (task negation, "base - LoRA_toxic"; `combination: linear, weights: [-1.0]` negates the
run's own adapter alone); ties / dare_ties refuse it at config load, since their sign election would drop the
negated delta instead of subtracting it. To serve several adapters on one base instead of merging them, see
tuneline.model.adapter_set (in Python) and tuneline.export.gguf_lora (GGUF LoRA adapters, export.lora_adapters).

The base is always loaded unquantized (a QLoRA adapter is merged into the dequantized base,
never into 4-bit weights). What merges, by sft.method:
- LoRA family (lora, qlora, dora, rslora, adalora) and ia3: folded into the weights (merge_and_unload);
- full, bitfit, galore: the trained dir already is a full model; it is re-saved in `dtype` with the card;
- bottleneck: refused with an error (it adds layers; tuneline/train/bottleneck.py says why).
- prefix_tuning, prompt_tuning, xlora: refused with an error. Virtual tokens are inputs, not weights, and
  X-LoRA picks its expert mix per token at run time, so no single set of weights equals the adapter;
  serve those as PEFT adapters (tuneline.model.adapters.load_adapter) instead of a merged model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftConfig

from tuneline.cards import CardInfo, merged_card, write_card
from tuneline.disk_space import MARGIN, dir_bytes, need_free
from tuneline.eval.report import EvalReport
from tuneline.model.adapters import is_adapter_dir, load_adapter, load_full
from tuneline.model.base import BaseModelRef, chat_template, load_model, load_tokenizer
from tuneline.train.bottleneck import refuse as refuse_bottleneck

UNMERGEABLE = {"PREFIX_TUNING": "prefix_tuning", "PROMPT_TUNING": "prompt_tuning", "XLORA": "xlora"}


def merge(ref: BaseModelRef, adapter_dir: str, out_dir: Path, dtype: str = "float16", card: dict | None = None,
          combination=None, evaluation_md: str = "", about: CardInfo | None = None,
          report: EvalReport | None = None) -> Path:
    """Fold `adapter_dir` into the base; with `combination` (a MergeConfig whose combination is not none),
    combine it with `combination.adapters` first. README.md is a Hugging Face model card: `about` (license,
    tags, datasets) and `report`'s figures for the final candidate as metadata; lineage (`card`) and
    `evaluation_md` as its text."""
    if Path(ref.path).exists():  # a hub id has no local dir to size
        need_free({out_dir: dir_bytes(ref.path) + MARGIN}, "merge")
    tok = load_tokenizer(ref)
    if combination is not None and combination.combination != "none":
        model = combine(ref, [adapter_dir, *combination.adapters], combination)
        card = {**(card or {}), "combination": combination.combination, "combined_with": combination.adapters,
                "weights": combination.weights, "density": combination.density}
    else:
        model = _merged(ref, adapter_dir)
    model = model.to(getattr(torch, dtype))
    model.config.use_cache = True
    # Generation stops at the turn end and at the model's own EOS (one id when they are the same token);
    # the tokenizer saved beside it carries the run's chat template (the GGUF converter embeds it).
    stops = tok.convert_tokens_to_ids(chat_template(ref).stops)
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    later = report is not None and report.forgetting_on == "merged"
    body = model_card(ref, adapter_dir, card or {}, evaluation_md, benchmarks_after_merge=later)
    write_card(out_dir, merged_card(ref, about or CardInfo(), report, body))
    return out_dir


def _merged(ref: BaseModelRef, adapter_dir: str):
    if not is_adapter_dir(adapter_dir):
        return load_full(adapter_dir)  # full / bitfit / galore: nothing to fold in
    refuse_bottleneck(adapter_dir, "merged")  # it adds layers: no weights to fold in (tuneline/train/bottleneck.py)
    peft_type = str(PeftConfig.from_pretrained(adapter_dir).peft_type.value)
    if peft_type in UNMERGEABLE:
        raise ValueError(
            f"{adapter_dir}: a {UNMERGEABLE[peft_type]} adapter cannot be merged into the base weights "
            "(virtual tokens / a per-token expert mix are not weights). Serve it as an adapter on the base "
            "(tuneline.model.adapters.load_adapter), or train a mergeable method (lora, dora, ia3, full, ...) "
            "to get a merged model and GGUF exports."
        )
    return load_adapter(load_model(ref), adapter_dir).merge_and_unload()


def model_card(ref: BaseModelRef, adapter_dir: str, card: dict, evaluation_md: str = "",
               benchmarks_after_merge: bool = False) -> str:
    """README.md of the merged dir: lineage (base and its hash, data hash, adapters, config) and, when the
    run evaluated before merging, the evaluation table, so the model carries its own evidence.
    `benchmarks_after_merge`: the final model's MMLU / GSM8K / perplexity are measured on these weights by
    score_merged, after this card is written; the card says where they are."""
    lines = [
        "# tuneline merged model", "",
        "## Lineage", "",
        f"- base model: `{ref.source}` (sha256 `{ref.sha256[:16]}`)",
        f"- adapter merged: `{Path(adapter_dir).name}`",
    ]
    lines += [f"- {k}: `{json.dumps(v, default=str)}`" for k, v in card.items()]
    how = card.get("combination") or "merge_and_unload"
    lines += ["", f"Made by tuneline ({how}). Chat template and EOS are in the tokenizer files and generation_config.json."]
    if evaluation_md:
        lines += ["", "## Evaluation (held-out rows and benchmarks, each candidate paired with the base)", "",
                  evaluation_md.rstrip()]
    if benchmarks_after_merge:
        lines += ["", "MMLU, GSM8K and general-text perplexity of these weights are measured once, after this "
                  "merge (the `score_merged` step). They are in the run's final evaluation (`promote`'s "
                  "`final_evaluation` artifact and its dashboard report)."]
    return "\n".join(lines) + "\n"


# --- combining several LoRA adapters (merge.combination) ----------------------------------------

COMBINE = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
COMBINABLE = ("LORA",)  # DoRA's magnitude vector, IA3's scaling and AdaLoRA's SVD form are not plain deltas


def combined_delta(deltas: list[torch.Tensor], weights: list[float], cfg) -> torch.Tensor:
    """One layer's weight change from several adapters' deltas, by PEFT's merge_utils (TIES, DARE, ...)."""
    from peft.utils import merge_utils

    w = torch.tensor(weights, dtype=deltas[0].dtype)
    if cfg.combination == "linear":
        return merge_utils.task_arithmetic(deltas, w)
    if cfg.combination == "magnitude_prune":
        return merge_utils.magnitude_prune(deltas, w, cfg.density)
    if cfg.combination == "dare_linear":
        return merge_utils.dare_linear(deltas, w, cfg.density)
    return getattr(merge_utils, cfg.combination)(deltas, w, cfg.density, cfg.majority_sign)  # ties, dare_ties


def combine(ref: BaseModelRef, adapter_dirs: list[str], cfg):
    """The base plus the `cfg.combination` of the adapters' full weight deltas, layer by layer."""
    for d in adapter_dirs:
        conf = PeftConfig.from_pretrained(d)
        kind = str(conf.peft_type.value)
        if kind not in COMBINABLE or getattr(conf, "use_dora", False):
            raise ValueError(f"{d}: a {kind.lower()}{' (DoRA)' if getattr(conf, 'use_dora', False) else ''} adapter "
                             f"cannot be combined by merge.combination {cfg.combination}; it combines LoRA adapters "
                             "(lora, qlora, rslora). Use merge.combination: none for this one")
    names = [f"a{i}" for i in range(len(adapter_dirs))]
    model = load_model(ref)
    for name, d in zip(names, adapter_dirs):
        model = load_adapter(model, d, adapter_name=name)
    weights = cfg.weights or [1.0] * len(names)
    torch.manual_seed(cfg.seed)  # DARE drops at random
    with torch.no_grad():
        for module in model.modules():
            present = [(n, w) for n, w in zip(names, weights) if n in getattr(module, "lora_A", {})]
            if present:
                deltas = [module.get_delta_weight(n).float() for n, _ in present]
                delta = combined_delta(deltas, [w for _, w in present], cfg)
                base = module.get_base_layer().weight
                base.add_(delta.to(base.dtype))
    return model.unload()  # drops the adapters without folding them in again
