"""Perplexity on held-out general text, for an HF model in memory and for a GGUF file, on the same token ids.

    texts = general_texts(cfg.evaluate)                      # evaluate.perplexity's texts ([] when off)
    hf = perplexity(model, tokenizer, texts)                 # PerplexityResult: ppl, per-text mean NLL
    gguf = gguf_perplexity("model-Q4_K_M.gguf", encode_texts(tokenizer, texts))   # pairs with `hf` text by text

`tuneline evaluate configs/default.yaml` scores every candidate this way; the export gate scores the
merged model and each exported file. Perplexity moves even when benchmark accuracy sits at chance
(tiny models), so it is the forgetting signal of last resort. The first token of each text has no
prediction and is not scored.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from pydantic import BaseModel

from tuneline.config import EvaluateConfig, resolve
from tuneline.data.readers import DataError
from tuneline.progress import progress


class PerplexityResult(BaseModel):
    ppl: float
    # Mean next-token NLL (nats) per text, in input order.
    per_item: list[float]
    n_tokens: int = 0
    seconds: float = 0.0


def read_general_texts(path: Path, field: str, rows: int, min_words: int) -> list[str]:
    """The last `rows` texts of a JSONL file with at least `min_words` words (held-out general text)."""
    texts = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    text = str(json.loads(line).get(field) or "").strip()
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({e})") from None
                if len(text.split()) >= min_words:
                    texts.append(text)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; set evaluate.perplexity.file") from None
    if len(texts) < 2:
        raise DataError(f"{path}: fewer than 2 '{field}' texts with {min_words}+ words; "
                        "set evaluate.perplexity.file/field")
    return texts[-rows:]


def general_texts(cfg: EvaluateConfig) -> list[str]:
    """evaluate.perplexity's held-out general texts ([] when it is off)."""
    p = cfg.perplexity
    return read_general_texts(resolve(p.file), p.field, p.rows, p.min_words) if p else []


def encode_texts(tokenizer, texts: list[str], max_length: int = 1024) -> list[list[int]]:
    """Token ids of each text as perplexity scores them (no special tokens), so a GGUF export is
    scored on exactly the tokens the HF model was."""
    encoded = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
               for t in texts]
    if short := [i for i, ids in enumerate(encoded) if len(ids) < 2]:
        raise ValueError(f"texts {short[:5]} have fewer than 2 tokens: nothing to score")
    return encoded


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 1024) -> PerplexityResult:
    """Token-weighted perplexity over texts, and each text's mean next-token NLL (plain torch)."""
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    encoded = encode_texts(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    # Longest first, so each batch pads little; results go back to input order.
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    nll_sum, n_tok = [0.0] * len(texts), [0] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in progress(range(0, len(order), batch_size), "perplexity", "batch"):
                idx = order[b : b + batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.zeros(len(idx), width, dtype=torch.long)
                mask = torch.zeros(len(idx), width, dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, : len(encoded[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
                for row, i in enumerate(idx):
                    nll_sum[i] = nll[row].sum().item()
                    n_tok[i] = int(mask[row, 1:].sum().item())
    finally:
        model.train(was_training)
    return perplexity_result(nll_sum, n_tok, start)


def gguf_perplexity(path: str | Path, encoded: list[list[int]]) -> PerplexityResult:
    """Perplexity of a GGUF file (llama.cpp) on token ids from `encode_texts`: the same tokens and the
    same per-text NLLs as `perplexity` on the HF model, so the two compare item by item."""
    from tuneline.eval.gguf_lm import GGUFLM

    start = time.perf_counter()
    lm = GGUFLM(path, n_ctx=max(2048, max(map(len, encoded)) + 1))
    try:
        nll = [_gguf_nll(lm.llm, ids) for ids in progress(encoded, f"perplexity {Path(path).name}", "text")]
    finally:
        lm.close()
    return perplexity_result(nll, [len(ids) - 1 for ids in encoded], start)


def _gguf_nll(llm, ids: list[int]) -> float:
    """Summed next-token NLL of ids[1:] given the tokens before each, from a `llama_cpp.Llama`."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    rows = llm.scores[: len(ids) - 1].astype(np.float64)
    logp = rows - np.logaddexp.reduce(rows, axis=1, keepdims=True)
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum())


def perplexity_result(nll_sum: list[float], n_tok: list[int], start: float) -> PerplexityResult:
    """Token-weighted perplexity from each text's summed NLL and scored-token count."""
    total = sum(n_tok)
    return PerplexityResult(
        ppl=math.exp(sum(nll_sum) / total),
        per_item=[s / n for s, n in zip(nll_sum, n_tok)],
        n_tokens=total,
        seconds=time.perf_counter() - start,
    )
