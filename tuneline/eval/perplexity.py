"""Perplexity on held-out general text, for an HF model in memory and for a GGUF file, on the same token ids.

    texts = general_texts(cfg.evaluate)                      # evaluate.perplexity's texts ([] when off)
    snap = read_general_text(cfg.evaluate.perplexity)        # GeneralText: the texts, the file's sha256, rejects
    general_texts(snap.pin(cfg.evaluate))                    # the snapshot's texts: the file is not read again
    hf = perplexity(model, tokenizer, texts)                 # PerplexityResult: ppl, per-text mean NLL
    sft, dpo = perplexities(peft, tokenizer, texts, ["sft", "dpo"])   # two LoRA adapters, one pass
    gguf = gguf_perplexity("model-Q4_K_M.gguf", encode_texts(tokenizer, texts))   # pairs with `hf` text by text

`tuneline evaluate configs/default.yaml` scores every candidate this way; the export gate scores the
merged model and each exported file. Perplexity moves even when benchmark accuracy sits at chance
(tiny models), so it is the forgetting signal of last resort. The first token of each text has no
prediction and is not scored.

In the pipeline the file is read once, by `snapshot_data` before training, into the `general_text` artifact
(a `GeneralText`: the texts, the file's sha256, its quarantined lines); `evaluate` and the exports take that
artifact and score its texts (`pin`), so editing the file re-runs them, and a run scores what it snapshotted.
The file goes through the data readers (tuneline/data/readers.py): a bad line is quarantined with its
file:line and reason, and only a file with fewer than 2 usable texts is an error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tuneline.config import EvaluateConfig, PerplexityConfig, resolve
from tuneline.data.readers import DataError, read_file, reject
from tuneline.model.base import sha256_file
from tuneline.progress import progress

log = logging.getLogger(__name__)


class PerplexityResult(BaseModel):
    ppl: float
    # Mean next-token NLL (nats) per text, in input order.
    per_item: list[float]
    n_tokens: int = 0
    seconds: float = 0.0


class PinnedTexts(PerplexityConfig):
    """evaluate.perplexity with its texts already read (GeneralText.pin): general_texts returns these."""

    texts: list[str]


# EvaluateConfig or ExportChecks: anything with a `perplexity: PerplexityConfig | None` field.
WithPerplexity = TypeVar("WithPerplexity", bound=BaseModel)


class GeneralText(BaseModel):
    """evaluate.perplexity's file as a run read it, before training: the `general_text` artifact.

    input_rows = kept + short + len(rejected): every row the file has is a text, too short, or quarantined."""

    config: PerplexityConfig | None = None  # what it was read with; None: perplexity is off
    sha256: str = ""  # of the file's bytes
    bytes: int = 0
    input_rows: int = 0
    kept: int = 0  # texts with min_words+ words (the last `rows` of them are scored)
    short: int = 0  # readable rows under min_words words: skipped, not errors
    texts: list[str] = []
    rejected: list[dict] = []  # quarantined rows: {source, line, reason, field, detail, row}

    def pin(self, cfg: WithPerplexity) -> WithPerplexity:
        """`cfg` with its perplexity texts taken from this snapshot, so the file is not read again."""
        p = cfg.perplexity
        if p is None:
            return cfg
        if p != self.config:
            raise ValueError(f"the general_text snapshot was read with {self.config}, but this step's "
                             f"evaluate.perplexity is {p}: pass the snapshot of the same config")
        return cfg.model_copy(update={"perplexity": PinnedTexts(**p.model_dump(), texts=self.texts)})

    def summary(self) -> dict:
        """What the snapshot step logs: the lineage and the row accounting, the first rejects by file:line."""
        return {"file": self.config.file if self.config else None, "sha256": self.sha256, "bytes": self.bytes,
                "input_rows": self.input_rows, "kept": self.kept, "short": self.short, "texts": len(self.texts),
                "rejected": len(self.rejected), "rejects": [_where(r) for r in self.rejected[:20]]}


def _where(r: dict) -> str:
    return f"{r['source']}:{r['line']}: {r['detail']} [{r['reason']}]"


def general_text_sha256(p: PerplexityConfig | None) -> str:
    """The file's sha256 as the pipeline compiles: snapshot_data's cache key for the general texts ('' when off)."""
    if p is None:
        return ""
    path = resolve(p.file)
    return sha256_file(path) if path.is_file() else f"missing:{p.file}"


def read_general_text(p: PerplexityConfig) -> GeneralText:
    """Read evaluate.perplexity's file through the data readers: any of their formats; a bad line (bad JSON or
    bytes, not an object, `field` missing or not text) is quarantined by file:line, not fatal; DataError only
    when fewer than 2 texts of `min_words`+ words are left."""
    name, path = p.file, resolve(p.file)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise DataError(f"{name}: {what}; set evaluate.perplexity.file to a .jsonl/.json/.csv/.parquet file of "
                        f"general text, or evaluate.perplexity: null to skip perplexity")
    rejected: list[dict] = []
    rows = read_file(name, path, rejected)
    input_rows, texts, short = len(rows) + len(rejected), [], 0
    for row in rows:
        value = row.get(p.field)
        if value is None:
            reject(rejected, row["_source"], row["_line"], "missing_field", p.field, f"'{p.field}' is missing or null", row)
        elif not isinstance(value, str):
            reject(rejected, row["_source"], row["_line"], "wrong_type", p.field,
                   f"'{p.field}' is a {type(value).__name__}, expected a string", row)
        elif len(value.split()) < p.min_words:
            short += 1
        else:
            texts.append(value.strip())
    if len(texts) < 2:
        bad = "".join(f"; {_where(r)}" for r in rejected[:5])
        raise DataError(f"{name}: fewer than 2 '{p.field}' texts with {p.min_words}+ words ({input_rows} rows: "
                        f"{len(texts)} long enough, {short} shorter, {len(rejected)} quarantined{bad}); "
                        "set evaluate.perplexity.file/field")
    return GeneralText(config=p, sha256=sha256_file(path), bytes=path.stat().st_size, input_rows=input_rows,
                       kept=len(texts), short=short, texts=texts[-p.rows:], rejected=rejected)


def read_general_texts(path: Path, field: str, rows: int, min_words: int) -> list[str]:
    """The last `rows` texts of a file with at least `min_words` words (held-out general text)."""
    return read_general_text(PerplexityConfig(file=str(path), field=field, rows=rows, min_words=min_words)).texts


def general_texts(cfg: EvaluateConfig) -> list[str]:
    """evaluate.perplexity's held-out general texts ([] when it is off): a pinned snapshot's, or read from the file."""
    p = cfg.perplexity
    if p is None:
        return []
    if isinstance(p, PinnedTexts):
        return list(p.texts)
    snap = read_general_text(p)
    if snap.rejected:
        log.warning("%s: %d of %d rows quarantined, e.g. %s", p.file, len(snap.rejected), snap.input_rows,
                    _where(snap.rejected[0]))
    return snap.texts


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
    return perplexities(model, tokenizer, texts, None, batch_size, max_length)[0]


def perplexities(model, tokenizer, texts: list[str], adapters: list[str] | None, batch_size: int = 8,
                 max_length: int = 1024) -> list[PerplexityResult]:
    """`perplexity` for several PEFT adapters of one PeftModel in the same forward passes, one result per adapter
    ("__base__": the bare base). Each text is repeated once per adapter and PEFT routes every row through its
    own adapter (mixed-adapter batches), so the shared base weights are read once per batch. adapters None:
    the model as it is, one result. A forward holds `batch_size` rows in all (the logits are rows x tokens x
    vocabulary floats), so each holds batch_size // len(adapters) texts; a text's NLL does not depend on its
    batch (right padding, causal attention) beyond float rounding."""
    import torch

    start = time.perf_counter()
    encoded = encode_texts(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    names = adapters or [None]
    per_batch = max(1, batch_size // len(names))
    # Longest first, so each batch pads little; results go back to input order.
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    nll_sum = [[0.0] * len(texts) for _ in names]
    n_tok = [0] * len(texts)
    was_training = model.training
    model.eval()
    try:
        # Always fp32, also inside evaluate.bf16's autocast: the export gate holds a converted file to +0.5 % of the
        # merged model's perplexity, and bf16 alone moved it by +0.30 % on the default run (24.917 -> 24.992).
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for b in progress(range(0, len(order), per_batch), "perplexity", "batch"):
                idx = order[b : b + per_batch]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.zeros(len(idx), width, dtype=torch.long)
                mask = torch.zeros(len(idx), width, dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, : len(encoded[i])] = 1
                    n_tok[i] = len(encoded[i]) - 1
                ids, mask = ids.repeat(len(names), 1).to(device), mask.repeat(len(names), 1).to(device)
                routing = {"adapter_names": [n for n in names for _ in idx]} if adapters else {}
                nll = summed_nll(model, ids, mask, routing)
                for c in range(len(names)):
                    for row, i in enumerate(idx):
                        nll_sum[c][i] = nll[c * len(idx) + row].item()
    finally:
        model.train(was_training)
    # One pass scored them all: each result carries its share of the time.
    share = (time.perf_counter() - start) / len(names)
    return [perplexity_result(s, n_tok, time.perf_counter() - share) for s in nll_sum]


# Positions per LM-head matmul in summed_nll: 128 x 49,152 fp32 logits are 25 MB, under glibc's 32 MB ceiling for
# reusing freed heap memory, so the chunks after the first take no fresh pages.
HEAD_CHUNK = 128


def summed_nll(model, ids, mask, routing: dict):
    """Each row's summed next-token NLL over its real tokens (right padding), in fp32.

    The model runs with logits_to_keep=1 and the LM head is applied to the final hidden states HEAD_CHUNK real
    positions at a time, so the rows x tokens x vocabulary logits (690 MB for the default run's longest batch, and
    as much again for their log-softmax) are never made: on the 2-core CPU those were ~1M fresh pages and 6-10 s
    of kernel time per 100 texts. The model's own logits at the last position check that its head is the output
    embedding alone (no softcapping, scaling or adapter on it) and that the hidden states line up with the ids (no
    virtual tokens); where not, the full logits are used."""
    import torch
    import torch.nn.functional as F

    head, captured = model.get_output_embeddings(), []
    hook = model.get_decoder().register_forward_hook(lambda _m, _a, out: captured.append(out[0] if isinstance(
        out, tuple) else out.last_hidden_state))
    try:
        last = model(input_ids=ids, attention_mask=mask, logits_to_keep=1, **routing).logits
    finally:
        hook.remove()
    hidden = captured[-1] if captured else None
    # Prompt tuning's virtual tokens lengthen the hidden states (and PEFT slices them off the logits): no match.
    aligned = hidden is not None and hidden.shape[:2] == ids.shape and last.shape[1] == 1
    if not aligned or not torch.allclose(head(hidden[:, -1]).float(), last[:, -1].float(), atol=1e-4, rtol=1e-4):
        # A second forward, for such models only: the check's forward kept one position.
        logits = model(input_ids=ids, attention_mask=mask, **routing).logits[:, :-1].float()
        return (F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]).sum(1)
    keep = mask[:, 1:].bool()
    states, targets = hidden[:, :-1][keep], ids[:, 1:][keep]
    per_token = torch.cat([F.cross_entropy(head(states[i : i + HEAD_CHUNK]).float(), targets[i : i + HEAD_CHUNK],
                                           reduction="none") for i in range(0, len(targets), HEAD_CHUNK)])
    return torch.zeros(len(ids), dtype=per_token.dtype, device=per_token.device).index_add_(
        0, keep.nonzero()[:, 0], per_token)


def gguf_perplexity(path: str | Path, encoded: list[list[int]]) -> PerplexityResult:
    """Perplexity of a GGUF file (llama.cpp) on token ids from `encode_texts`: the same tokens and the
    same per-text NLLs as `perplexity` on the HF model, so the two compare item by item."""
    start = time.perf_counter()
    with gguf_scorer(path, encoded) as score:
        per_item = score(0, len(encoded))
    n_tok = [len(ids) - 1 for ids in encoded]
    return perplexity_result([x * n for x, n in zip(per_item, n_tok)], n_tok, start)


@contextlib.contextmanager
def gguf_scorer(path: str | Path, encoded: list[list[int]]) -> Iterator[Callable[[int, int], list[float]]]:
    """`score(start, end)`: the mean next-token NLL of each of encoded[start:end] under the GGUF file, one model load
    for every call inside the block (the export gate scores the texts a look at a time: gate.judge_perplexity)."""
    from tuneline.eval.gguf_lm import GGUFLM

    lm = GGUFLM(path, n_ctx=max(2048, max(map(len, encoded)) + 1))
    bar = progress(desc=f"perplexity {Path(path).name}", unit="text", total=len(encoded))

    def score(start: int, end: int) -> list[float]:
        out = []
        for ids in encoded[start:end]:
            out.append(_gguf_nll(lm.llm, ids) / (len(ids) - 1))
            bar.update()
        return out

    try:
        yield score
    finally:
        bar.close()
        lm.close()


def _gguf_nll(llm, ids: list[int]) -> float:
    """Summed next-token NLL of ids[1:] given the tokens before each, from a `llama_cpp.Llama`."""
    from tuneline.eval.gguf_lm import picked_logprobs

    llm.reset()
    llm.eval(ids)
    return float(-picked_logprobs(llm.scores[: len(ids) - 1], ids[1:]).sum())


def perplexity_result(nll_sum: list[float], n_tok: list[int], start: float) -> PerplexityResult:
    """Token-weighted perplexity from each text's summed NLL and scored-token count."""
    total = sum(n_tok)
    return PerplexityResult(
        ppl=math.exp(sum(nll_sum) / total),
        per_item=[s / n for s, n in zip(nll_sum, n_tok)],
        n_tokens=total,
        seconds=time.perf_counter() - start,
    )
