"""GGUF LoRA adapters beside a base GGUF: one base file, many task adapters, served by llama.cpp or Ollama.

    export: {lora_adapters: true}     # the export_gguf step also writes base-F16.gguf, <name>-lora-F16.gguf,
                                      # a Modelfile per adapter and lora_adapters.json (this module's LoraExport)
    res = export_lora_adapters(base_dir, [LoraPart(name="sft", path=adapter_dir)], merged_dir, merged_gguf,
                               out_dir, conversations, max_tokens=16)
    llama-cli -m base-F16.gguf --lora sft-lora-F16.gguf      # or: ollama create banking -f sft-lora-F16.Modelfile

Each adapter goes through llama.cpp's `convert_lora_to_gguf.py`, from the same sdist as the converter
tuneline.export.gguf runs (scripts/install_llama_cpp.sh copies both). The base GGUF is converted from the
base weights with the merged model's tokenizer files, so it embeds the same chat template and EOS.
No file is trusted: the base GGUF with the adapters applied at run time (llama.cpp's llama_set_adapters_lora,
each adapter's merge weight as its scale) answers the held-out prompts greedily, and `agreement` is the share of
answers identical to the merged GGUF's (same type). `base_agreement` is the base alone against the merged GGUF:
how much the adapters change, so a high agreement means something.

What converts: plain LoRA (lora, qlora, rslora: rsLoRA's alpha/sqrt(r) scale is written as the alpha that gives
it, since llama.cpp scales by alpha/r). Refused with the reason: DoRA (a magnitude vector llama.cpp does not
apply), AdaLoRA / IA3 / prompt methods (not LoRA matrices), per-module rank or alpha patterns (one alpha per
file), modules_to_save (whole trained modules are not deltas). The agreement check needs a merged model that is
base + weighted adapters: merge.combination none or linear; the pruning and sign-electing combinations are
converted but not compared. Ollama's ADAPTER takes one adapter per Modelfile and no scale: each Modelfile serves
its adapter at weight 1 (its own task); a negation or a weighted mix ships as the merged GGUF, or llama.cpp's
`--lora-scaled FILE SCALE`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from tuneline.export.gguf import ExportError, _base_type, converter_dir, read_metadata, run_converter, write_modelfile
from tuneline.model.base import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


class LoraPart(BaseModel):
    """One adapter of the merged model: its dir, and its weight in merge.combination (1.0 without one)."""

    name: str
    path: str
    weight: float = 1.0


class LoraFile(BaseModel):
    name: str
    source: str  # the PEFT adapter dir it was converted from
    path: str  # the GGUF adapter file (beside the base GGUF)
    weight: float
    size_bytes: int = 0
    sha256: str = ""
    modelfile: str | None = None
    modelfile_note: str = ""


class LoraExport(BaseModel):
    base: str  # the base GGUF the adapters apply to
    base_sha256: str = ""
    adapters: list[LoraFile] = []
    rows: int = 0  # held-out prompts compared
    agreement: float | None = None  # base + adapters vs the merged GGUF: share of identical greedy answers
    base_agreement: float | None = None  # the base alone vs the merged GGUF
    differing: list[str] = []  # the first few prompts where base + adapters answered otherwise
    note: str = ""
    seconds: float = 0.0


# --- converting ---------------------------------------------------------------------------------


def lora_converter() -> Path:
    path = converter_dir() / "convert_lora_to_gguf.py"
    if not path.is_file():
        raise FileNotFoundError(f"llama.cpp's LoRA converter is not at {path}: re-run `make setup` or "
                                f"`scripts/install_llama_cpp.sh {sys.prefix}` (it copies it from the same sdist)")
    return path


def convertible(adapter_dir: str | Path) -> dict:
    """The adapter's config, if llama.cpp can apply it as a GGUF LoRA; else ExportError says why and what to do."""
    conf_file = Path(adapter_dir) / "adapter_config.json"
    if not conf_file.is_file():
        raise ExportError(f"{adapter_dir}: no adapter_config.json, not a PEFT adapter (a full-weight method's "
                          "model dir has no adapter to export: serve the merged GGUF)")
    conf = json.loads(conf_file.read_text())
    kind = str(conf.get("peft_type", "")).upper()
    why = ("" if kind == "LORA" else f"a {kind.lower() or 'non-LoRA'} adapter is not LoRA matrices")
    why = why or ("DoRA's magnitude vector is not applied by llama.cpp's LoRA" if conf.get("use_dora") else "")
    why = why or ("per-module rank_pattern / alpha_pattern (a GGUF adapter has one alpha)"
                  if conf.get("rank_pattern") or conf.get("alpha_pattern") else "")
    why = why or (f"modules_to_save {conf['modules_to_save']} are whole trained modules, not deltas"
                  if conf.get("modules_to_save") else "")
    if why:
        raise ExportError(f"{adapter_dir}: cannot be exported as a GGUF LoRA adapter: {why}. Serve the merged GGUF "
                          "instead (set export.lora_adapters: false), or train sft.method lora / qlora / rslora")
    return conf


def _staged_adapter(adapter_dir: Path, tmp: Path) -> Path:
    """The adapter with the alpha llama.cpp needs: it scales by alpha/r, rsLoRA by alpha/sqrt(r)."""
    conf = convertible(adapter_dir)
    if conf.get("use_rslora"):
        conf["lora_alpha"] = conf["lora_alpha"] * math.sqrt(conf["r"])
        conf["use_rslora"] = False
    out = tmp / "adapter"
    out.mkdir()
    for f in adapter_dir.iterdir():
        if f.name.startswith("adapter_model."):
            (out / f.name).symlink_to(f.resolve())
    (out / "adapter_config.json").write_text(json.dumps(conf))
    return out


def _staged_base(base_dir: Path, merged_dir: Path, tmp: Path) -> Path:
    """The base weights with the merged model's config, tokenizer files and generation config, so the base
    GGUF embeds the same chat template and stop tokens as the merged GGUF."""
    out = tmp / "base"
    out.mkdir()
    for f in base_dir.iterdir():
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            (out / f.name).symlink_to(f.resolve())
    for f in merged_dir.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != "README.md":
            shutil.copy(f, out / f.name)
    return out


def convert_adapter(adapter_dir: str | Path, base_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> Path:
    """A PEFT LoRA adapter dir as a GGUF LoRA adapter for the base at `base_dir` (only its config.json is read)."""
    with tempfile.TemporaryDirectory(prefix="tuneline-lora-") as tmp:
        staged = _staged_adapter(Path(adapter_dir), Path(tmp))
        return run_converter(lora_converter(), ["--base", str(base_dir), "--outtype", _base_type(outtype).lower(), str(staged)],
                    Path(out_file))


def convert_base(base_dir: str | Path, merged_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> Path:
    """The base weights as a GGUF with the merged model's tokenizer and chat template."""
    with tempfile.TemporaryDirectory(prefix="tuneline-lora-base-") as tmp:
        staged = _staged_base(Path(base_dir), Path(merged_dir), Path(tmp))
        return run_converter(converter_dir() / "convert_hf_to_gguf.py", [str(staged), "--outtype", _base_type(outtype).lower()],
                    Path(out_file))


# --- asking base + adapters ---------------------------------------------------------------------


def answers(model_path: str | Path, conversations: list[list[dict]], max_tokens: int,
            loras: list[tuple[str | Path, float]] = (), n_ctx: int = 2048) -> list[str]:
    """Greedy answers through the GGUF's chat template, with `loras` (file, scale) applied at run time."""
    import llama_cpp

    from tuneline.export.gguf import _llama_log

    with _llama_log():  # setting adapters re-plans the graph, which llama.cpp logs at length
        llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, verbose=False, n_threads=os.cpu_count())
        try:
            if loras:
                _apply(llm, loras)
        except BaseException:
            llm.close()
            raise
    try:
        out = []
        for conv in conversations:
            res = llm.create_chat_completion(messages=conv, temperature=0, max_tokens=max_tokens)
            out.append(res["choices"][0]["message"]["content"] or "")
        return out
    finally:
        llm.close()


def _apply(llm, loras: list[tuple[str | Path, float]]) -> None:
    """Load each adapter on the model and set them all, scaled, on the context (llama-cpp-python's own
    `lora_path` takes one). Freed with the model: they are pushed on its exit stack after it."""
    import llama_cpp

    handles = []
    for path, _ in loras:
        h = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode())
        if not h:
            raise ExportError(f"llama.cpp could not load the LoRA adapter {path} on {llm.model_path}: "
                              "was it converted for this base (same architecture and shapes)?")
        llm._stack.callback(llama_cpp.llama_adapter_lora_free, h)
        handles.append(h)
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
    scales = (ctypes.c_float * len(handles))(*[float(s) for _, s in loras])
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, arr, len(handles), scales):
        raise ExportError(f"llama.cpp could not set the LoRA adapters {[str(p) for p, _ in loras]}")


# --- Ollama -------------------------------------------------------------------------------------


def write_adapter_modelfile(base_gguf: str | Path, adapter_gguf: str | Path, conversation: list[dict]) -> Path:
    """`<adapter stem>.Modelfile`: the base's Modelfile (tuneline.export.gguf.write_modelfile, written beside the
    base GGUF too) with an `ADAPTER ./<adapter file>` line after FROM. Both files must sit in one dir."""
    base_gguf, adapter_gguf = Path(base_gguf), Path(adapter_gguf)
    text = write_modelfile(base_gguf, read_metadata(base_gguf), conversation).read_text()
    lines = text.splitlines()
    lines.insert(1, f"ADAPTER ./{adapter_gguf.name}")
    out = adapter_gguf.with_suffix(".Modelfile")
    out.write_text("\n".join(lines) + "\n")
    return out


# --- the whole thing ----------------------------------------------------------------------------


def export_lora_adapters(base_dir: str | Path, parts: list[LoraPart], merged_dir: str | Path,
                         merged_gguf: str | Path | None, out_dir: str | Path, conversations: list[list[dict]],
                         max_tokens: int, outtype: str = "F16", compare: bool = True) -> LoraExport:
    """Base GGUF + one GGUF LoRA per part in out_dir, each with its Modelfile; with `compare` (the merged model is
    base + the weighted parts) and conversations, the agreement with `merged_gguf`. Written to lora_adapters.json."""
    start, out_dir = time.monotonic(), Path(out_dir)
    for p in parts:  # refuse before converting anything
        convertible(p.path)
    qtype = _base_type(outtype)
    # Each converter is its own Python process, mostly importing torch: run them side by side.
    with ThreadPoolExecutor(max_workers=min(1 + len(parts), os.cpu_count() or 1)) as pool:
        base_job = pool.submit(convert_base, base_dir, merged_dir, out_dir / f"base-{qtype}.gguf", qtype)
        jobs = [pool.submit(convert_adapter, p.path, base_dir, out_dir / f"{p.name}-lora-{qtype}.gguf", qtype)
                for p in parts]
        base, files = base_job.result(), [j.result() for j in jobs]
    res = LoraExport(base=base.name, base_sha256=sha256_file(base))
    for p, f in zip(parts, files):
        entry = LoraFile(name=p.name, source=str(p.path), path=f.name, weight=p.weight, size_bytes=f.stat().st_size,
                         sha256=sha256_file(f))
        if conversations:
            try:
                entry.modelfile = write_adapter_modelfile(base, f, conversations[0]).name
            except Exception as exc:  # noqa: BLE001  (a Modelfile problem must not hide the adapter file)
                entry.modelfile_note = f"no Modelfile: {exc}"
        res.adapters.append(entry)
    if not conversations:
        res.note = "no agreement check: a text task has no held-out prompts"
    elif not compare or merged_gguf is None:
        res.note = "no agreement check: the merged model is not base + weighted adapters (pruned or sign-elected deltas)"
    else:
        merged = answers(merged_gguf, conversations, max_tokens)
        both = answers(base, conversations, max_tokens, [(out_dir / a.path, a.weight) for a in res.adapters])
        alone = answers(base, conversations, max_tokens)
        res.rows = len(conversations)
        res.agreement = sum(a == b for a, b in zip(both, merged)) / res.rows
        res.base_agreement = sum(a == b for a, b in zip(alone, merged)) / res.rows
        res.differing = [c[-1]["content"] for c, a, b in zip(conversations, both, merged) if a != b][:5]
    res.seconds = round(time.monotonic() - start, 3)
    (out_dir / "lora_adapters.json").write_text(res.model_dump_json(indent=2))
    return res


def parts_of(adapter_dir: str, merge_cfg) -> tuple[list[LoraPart], bool]:
    """The merged model's adapters (the run's, then merge.adapters) with their merge weights, and whether the merged
    model is exactly base + their weighted sum (combination none or linear), which the agreement check needs."""
    dirs = [adapter_dir, *(merge_cfg.adapters if merge_cfg else [])]
    weights = (merge_cfg.weights if merge_cfg else None) or [1.0] * len(dirs)
    names = ["run", *[f"a{i}-{Path(d).name}" for i, d in enumerate(dirs[1:], 1)]]  # unique file names
    exact = merge_cfg is None or merge_cfg.combination in ("none", "linear")
    return [LoraPart(name=n, path=str(d), weight=w) for n, d, w in zip(names, dirs, weights)], exact


def export_for_run(base_dir: str, merged_dir: str, adapter_dir: str, merge_cfg, out_dir: str | Path, rows: list[dict],
                   cfg, max_new_tokens: int, merged_gguf: str | Path | None) -> LoraExport:
    """The export_gguf step's call (export.lora_adapters): the run's adapter and merge.adapters beside the base GGUF,
    in the type of the converted file (export.gguf_types[0]), compared with it on the checked rows."""
    from tuneline.data.records import messages
    from tuneline.export.gate import checked_rows

    parts, exact = parts_of(adapter_dir, merge_cfg)
    text = any(r.get("shape") == "text" for r in rows)  # a text task asks nothing
    conversations = [] if text else [messages(r, with_answer=False) for r in checked_rows(rows, cfg.check_rows)]
    return export_lora_adapters(base_dir, parts, merged_dir, merged_gguf, out_dir, conversations, max_new_tokens,
                                cfg.gguf_types[0], compare=exact)
