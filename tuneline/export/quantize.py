"""4-bit GPTQ and AWQ exports of a merged model, quantized on CPU by GPTQModel, loadable by transformers,
and checked by the gate like a GGUF file (the pipeline's export_gptq / export_awq steps).

    tuneline export configs/default.yaml /tmp/merged --out /tmp/gptq --format gptq   # as export_gptq
    res, q = export_quantized(MERGED_DIR, OUT_DIR, "gptq", train_rows, eval_rows, cfg.quantize, cfg.export, checks,
                              reference)  # the score_merged step's MergedReference; None: scored here

Calibration texts are training rows rendered by the chat template (calibration_texts). Needs the `quant`
extra: `pip install -e '.[quant]'` (gptqmodel pins numpy==2.2.6 and protobuf>=7.34).

The export dir holds safetensors, config.json (with `quantization_config`), the tokenizer, the chat
template and the merged model's generation_config, plus `tuneline_quant.json` (the QuantExport below).
`AutoModelForCausalLM.from_pretrained(dir)` loads it on CPU when gptqmodel (and, for GPTQ, optimum) is
installed: transformers 5.23 routes both GPTQ and AWQ checkpoints to GPTQModel's CPU kernels.
"""

from __future__ import annotations

import os

# GPTQModel sizes its CPU thread pool from this variable on first use; its own default is
# half the cores (1 worker on a 2-core machine). Set before anything imports gptqmodel.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

from pydantic import BaseModel  # noqa: E402

from tuneline.config import ExportConfig, QuantizeConfig  # noqa: E402
from tuneline.disk_space import dir_bytes  # noqa: E402
from tuneline.export.gate import (ExportChecks, checked_rows, gate_for, judge_perplexity, reference_for,  # noqa: E402
                                  verdict)
from tuneline.export.records import ExportFile, ExportResult, ExportSample, MergedReference  # noqa: E402
from tuneline.model.base import sha256_file  # noqa: E402
from tuneline.progress import progress  # noqa: E402
from tuneline.versions import package_versions  # noqa: E402

Method = Literal["gptq", "awq"]
INSTALL_HINT = "pip install -e '.[quant]' (gptqmodel==7.6.0 and optimum==2.3.0)"
META_FILE = "tuneline_quant.json"
# Copied from the merged dir over whatever GPTQModel writes: its generation_config.json turns on
# do_sample (greedy evaluation would silently sample), and it may not write a chat template at all.
COPIED_FILES = ("generation_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


class QuantError(RuntimeError):
    """A quantization export that cannot run or did not produce a usable model; says what to do next."""


class QuantExport(BaseModel):
    """What one quantization run produced, serialisable as an artifact's metadata."""

    method: Method
    bits: int
    group_size: int
    path: str
    size_bytes: int  # the whole export dir
    weights_bytes: int
    sha256: str  # of the weight file; of "name sha256" lines when sharded
    weight_files: dict[str, str]  # file name -> sha256
    dtype: str | None  # of the unquantized parts (embeddings, norms) and the activations
    calibration_samples: int
    calibration_tokens: int
    versions: dict[str, str | None]
    seconds: float


# --- calibration ------------------------------------------------------------------------------------


def record_messages(record: dict) -> list[dict]:
    """The chat of one training record, with its gold answer: tuneline task records (`prompt` JSON +
    `assistant`) or plain `system`/`user`/`assistant` dicts. As in data.system_prompt, a None system turn is
    left out (the template may add its default) and "" is kept as an empty system turn."""
    if "prompt" in record:
        from tuneline.data.records import messages

        return messages(record)
    msgs = [{"role": "system", "content": record["system"]}] if record.get("system") is not None else []
    return msgs + [{"role": "user", "content": record["user"]}, {"role": "assistant", "content": record["assistant"]}]


def calibration_texts(records: list[dict], n: int, seed: int, tokenizer) -> list[str]:
    """`n` records drawn without replacement (all of them when fewer), rendered by the chat template,
    so the quantizer sees the same text layout as training and serving. Plain `text` records pass as is."""
    if not records:
        raise QuantError("no calibration records: pass the training rows (split 'train') of the validated data")
    rows = list(records)
    random.Random(seed).shuffle(rows)
    texts = []
    for r in rows[:n]:
        if "text" in r and "assistant" not in r:
            texts.append(str(r["text"]))
        elif r.get("shape") == "text":  # a document (continued pretraining) trains and serves without a template
            texts.append(str(r["assistant"]))
        else:
            texts.append(tokenizer.apply_chat_template(record_messages(r), tokenize=False))
    return texts


def _encode(texts: list[str], tokenizer, max_tokens: int) -> list[dict]:
    """Token ids per text, cut to max_tokens. The chat template already adds any special tokens."""
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
        if ids:
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return out


# --- export -----------------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    return package_versions("gptqmodel", "transformers", "torch", "optimum")


def _require_backend(load: bool = False) -> None:
    missing = [p for p in (("gptqmodel", "optimum") if load else ("gptqmodel",)) if versions()[p] is None]
    if missing:
        raise QuantError(f"{' and '.join(missing)} not installed: run {INSTALL_HINT}")


def check_group_size(model_dir: Path, group_size: int) -> None:
    """Fail before a long run when a quantized Linear's input width is not a multiple of group_size."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    hidden, inter = cfg.get("hidden_size"), cfg.get("intermediate_size")
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    widths = {"hidden_size": hidden, "intermediate_size": inter,
              "num_attention_heads x head_dim": heads * head_dim if heads and head_dim else None}
    bad = {k: w for k, w in widths.items() if w and w % group_size}
    if bad:
        fits = [g for g in (256, 128, 64, 32) if all(w % g == 0 for w in widths.values() if w)]
        hint = f"set quantize.group_size to {fits[0]}" if fits else "no supported group size fits this model"
        raise QuantError(f"{model_dir}: {', '.join(f'{k} {w}' for k, w in bad.items())} not a multiple of "
                         f"group_size {group_size}; {hint}")


def _gptqmodel_config(method: Method, cfg: QuantizeConfig):
    from gptqmodel import QuantizeConfig as GPTQModelConfig

    # offload_to_disk (GPTQModel's default) parks layers in a temp dir and writes that path into
    # config.json; small models do not need it, and the export stays free of machine paths.
    return GPTQModelConfig(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, method=method,
                           offload_to_disk=False)


@contextlib.contextmanager
def layer_progress(model, desc: str):
    """A bar over the decoder layers, which GPTQModel quantizes one after the other (its own bar draws only
    on a terminal): when layer i first runs, the layers before it are done."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    layers = max(lists, key=len) if lists else []
    bar = progress(desc=desc, unit="layer", total=len(layers))

    def started(i: int):
        def hook(_module, _args):
            if i > bar.n:
                bar.update(i - bar.n)
        return hook

    handles = [layer.register_forward_pre_hook(started(i)) for i, layer in enumerate(layers)]
    try:
        yield bar
        bar.update(bar.total - bar.n)
    finally:
        for h in handles:
            h.remove()
        bar.close()


@contextlib.contextmanager
def released_thread_pool():
    """GPTQModel's device thread pool, shut down when the block ends and rebuilt by the next quantization.

    Its workers outlive `quantize` (the local orchestrator runs every step in one process), and while they were
    alive llama.cpp's decoding in that process ran 3x slower: 40 rows of the GGUF check 12.0 s against 3.9 s after a
    GPTQ run, 3.9 s again once the pool was shut down (2026-12-05; in the default run, export_gguf after export_awq
    took 287 s). GPTQModel has no public reset: it rebuilds the pool when its module global is None."""
    try:
        yield
    finally:
        import gptqmodel

        pool, gptqmodel._DEVICE_THREAD_POOL = gptqmodel._DEVICE_THREAD_POOL, None
        if pool is not None:
            pool.shutdown()


# Calibration rows per forward. Measured on the default run's merged model (2-core CPU, 2026-12-04): GPTQ 71 s
# at 1, 51 s at 8 (perplexity 29.42 and 28.93: the same verdict); AWQ 81 s at 1, 269 s at 8 (its scale search
# runs on the whole padded batch).
CALIBRATION_BATCH = {"gptq": 8, "awq": 1}


def quantize(model_dir: str | Path, out_dir: str | Path, method: Method, cfg: QuantizeConfig,
             texts: list[str]) -> QuantExport:
    """Quantize the HF model in model_dir to out_dir (replaced atomically: a killed run leaves no half export)."""
    if method not in ("gptq", "awq"):
        raise QuantError(f"unknown method {method!r}: use gptq or awq")
    _require_backend()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").exists():
        raise QuantError(f"{model_dir}: no config.json; pass a merged Hugging Face model dir (save_pretrained)")
    check_group_size(model_dir, cfg.group_size)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    calib = _encode(texts, tok, cfg.calibration_max_tokens)
    # GPTQModel silently drops samples under 10 tokens; too few left gives a singular Hessian.
    usable = [c for c in calib if len(c["input_ids"]) >= 10]
    if len(usable) < 2:
        raise QuantError(f"{len(usable)} calibration samples of 10+ tokens (of {len(texts)} texts): pass more "
                         "training rows or raise quantize.calibration_max_tokens")

    from gptqmodel import BACKEND, GPTQModel

    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=out_dir.name + ".tmp"))
    try:
        model = GPTQModel.load(str(model_dir), _gptqmodel_config(method, cfg), device="cpu")
        # Without CUDA, AWQ needs its pure-torch kernel named (AUTO looks for a GPU kernel).
        backend = BACKEND.AWQ_TORCH if method == "awq" else BACKEND.AUTO
        with layer_progress(model.model, f"{method} quantization"):
            model.quantize(usable, batch_size=CALIBRATION_BATCH[method], tokenizer=tok, backend=backend)
        model.save(str(tmp))
        dtype = str(getattr(model.model, "dtype", "")).removeprefix("torch.") or None
        del model
        for name in COPIED_FILES:
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, tmp / name)
        weights = sorted(tmp.glob("*.safetensors"))
        if not weights:
            raise QuantError(f"GPTQModel wrote no safetensors into {tmp}; see its log above")
        shas = {w.name: sha256_file(w) for w in weights}
        combined = next(iter(shas.values())) if len(shas) == 1 else \
            hashlib.sha256("".join(f"{k} {v}\n" for k, v in shas.items()).encode()).hexdigest()
        result = QuantExport(
            method=method, bits=cfg.bits, group_size=cfg.group_size, path=str(out_dir),
            size_bytes=0, weights_bytes=sum(w.stat().st_size for w in weights), sha256=combined, weight_files=shas,
            dtype=dtype, calibration_samples=len(usable),
            calibration_tokens=sum(len(c["input_ids"]) for c in usable), versions=versions(),
            seconds=round(time.perf_counter() - start, 2))
        while True:  # size_bytes counts this file too, whose length depends on the number in it
            (tmp / META_FILE).write_text(result.model_dump_json(indent=2) + "\n")
            size = dir_bytes(tmp)
            if size == result.size_bytes:
                break
            result.size_bytes = size
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_quantized(out_dir: str | Path, dtype: str | None = None):
    """(model, tokenizer) of an export on CPU, through transformers' AutoModelForCausalLM: its GPTQ
    quantizer (needs optimum + gptqmodel) and its AWQ quantizer (needs gptqmodel) both run GPTQModel's
    CPU kernels. dtype None keeps the export's own (bfloat16 as GPTQModel saves on CPU)."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        raise QuantError(f"{out_dir}: not a quantized export (no config.json); run tuneline.export.quantize first")
    qcfg = json.loads((out_dir / "config.json").read_text()).get("quantization_config") or {}
    method = qcfg.get("quant_method") or qcfg.get("method")
    if method not in ("gptq", "awq"):
        raise QuantError(f"{out_dir}: config.json has no GPTQ/AWQ quantization_config (found {method!r})")
    _require_backend(load=method == "gptq")
    import gptqmodel  # noqa: F401  (registers its transformers patches)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"device_map": "cpu"}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(out_dir, **kwargs)
    model.eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def export_quantized(model_dir: str, out_dir: Path, method: Method, train_records: list[dict], records: list[dict],
                     qcfg: QuantizeConfig, cfg: ExportConfig, checks: ExportChecks,
                     reference: MergedReference | None = None) -> tuple[ExportResult, QuantExport]:
    """GPTQ or AWQ 4-bit (GPTQModel, calibrated on training rows), loaded back by transformers and judged
    like a GGUF file against the merged model (`reference`, the score_merged step's; without one it is scored
    here): task metric and general-text perplexity on the same rows and tokens, the same gate
    (export.max_accuracy_drop, max_perplexity_increase.default). A file that fails the gate is kept and marked
    rejected; a quantization that cannot run raises. MMLU / GSM8K run only on the file that ships, a GGUF file."""
    from transformers import AutoTokenizer

    from tuneline.eval.perplexity import general_texts

    rows = checked_rows(records, cfg.check_rows)
    texts = general_texts(checks)
    # Its own reference needs no benchmarks: a GPTQ/AWQ file never ships (records.shipped), nor runs them.
    merged = reference_for(model_dir, rows, checks, reference, benchmarks=False)
    calib = calibration_texts(train_records, qcfg.calibration_rows, qcfg.seed, AutoTokenizer.from_pretrained(model_dir))
    start = time.monotonic()
    with released_thread_pool():
        q, entry = _quantize_and_check(model_dir, out_dir, method, rows, texts, qcfg, cfg, checks, merged, calib)
    entry.seconds = round(time.monotonic() - start, 3)  # quantizing plus checking, as for a GGUF file
    return merged.result(method, [entry]), q


def _quantize_and_check(model_dir: str, out_dir: Path, method: Method, rows: list[dict], texts: list[str],
                        qcfg: QuantizeConfig, cfg: ExportConfig, checks: ExportChecks, merged: MergedReference,
                        calib: list[str]) -> tuple[QuantExport, ExportFile]:
    from tuneline.data.records import messages
    from tuneline.eval.perplexity import perplexity
    from tuneline.eval.scoring import lower_is_better
    from tuneline.eval.task import score_task

    q = quantize(model_dir, out_dir, method, qcfg, calib)
    entry = ExportFile(format=method, qtype=f"W{q.bits}G{q.group_size}", path=q.path, size_bytes=q.size_bytes,
                       sha256=q.sha256)
    model, tok = load_quantized(q.path)
    # EOS is not measured here (min_eos_share 0 below): transformers stops on the merged model's generation
    # config, copied into the export; the report shows "-" for it.
    gate = gate_for(cfg, merged, min_eos_share=0.0)
    if texts:  # first, as for GGUF files: the cheaper check, and a rejection needs no task rows
        judge_perplexity(entry, lambda start, end: perplexity(model, tok, texts[start:end]).per_item,
                         [len(ids) - 1 for ids in merged.ppl_ids], gate)
    if not lower_is_better(checks.metric) and gate.ppl_rejects(entry):
        entry.asked = False  # ~25 s of generation on the default run that cannot change the verdict
    else:
        task = score_task(model, tok, rows, checks.max_new_tokens, batch_size=32, metric=checks.metric)
        entry.score, entry.per_item, entry.ask_seconds = task.score, task.per_item, task.seconds
        entry.samples = [ExportSample(prompt=messages(r, with_answer=False)[-1]["content"], expected=r["assistant"],
                                      predicted=p, finish_reason="") for r, p in zip(rows, task.predictions)]
    entry.passed, entry.reason = verdict(entry, gate)
    if checks.benchmarks:
        entry.benchmarks_note = "not run (only the file that ships, a GGUF file, is benchmarked)"
    return q, entry
