"""GGUF files of a merged Hugging Face model dir, made with llama.cpp's own tools, each checked by the gate.

    tuneline export configs/default.yaml /tmp/merged --out /tmp/gguf      # as the pipeline's export_gguf step
    files = export_files(MERGED_DIR, OUT_DIR, ["f16", "Q8_0", "auto"], probe, gate)

Needs `make setup` (or `scripts/install_llama_cpp.sh VENV`),
which installs llama-cpp-python and copies llama.cpp's `convert_hf_to_gguf.py` from the same sdist.

The first type (f16/bf16/f32) is converted from the HF dir; the others are quantized from it; `auto`
tries a list of types smallest first and keeps the first that passes. No file is trusted: each is
loaded back by llama.cpp, scored on held-out general text (perplexity on the merged model's own token
ids) and asked the held-out questions through the chat template embedded in the GGUF. It passes only
if its perplexity and accuracy stay near the merged model's and its answers end at EOS (a broken
quantization rambles to the length limit or answers gibberish). A rejected file is kept and marked.
A raw-text task (evaluate.metric perplexity) is asked nothing: each file's task score is its perplexity on the
held-out documents (the merged model's token ids), judged like the general-text perplexity; no serving check.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from tuneline.config import ExportConfig
from tuneline.data.records import messages
from tuneline.disk_space import MARGIN, dir_bytes, need_free
from tuneline.eval.scoring import score_items
from tuneline.export.gate import (ExportChecks, Gate, Probe, checked_rows, gate_for, judge_perplexity, probe_metric,
                                  reference_for, verdict)
from tuneline.export.gguf_types import GGUF_FTYPES
from tuneline.export.records import ExportFile, ExportResult, ExportSample, MergedReference, shipped
from tuneline.export.serve import serve_shipped
from tuneline.model import templates
from tuneline.model.base import sha256_file
from tuneline.versions import package_versions

log = logging.getLogger(__name__)

BASE_TYPES = ("F32", "F16", "BF16")  # what convert_hf_to_gguf.py writes and quantize can start from


class GGUFCheck(BaseModel):
    score: float
    eos_share: float
    samples: list[ExportSample]
    per_item: list[float] = []
    seconds: float = 0.0  # loading the file and asking every row, as TaskResult.seconds for an HF model


class ExportError(RuntimeError):
    pass


# --- locating and running llama.cpp's converter -------------------------------------------------


def converter_dir() -> Path:
    """Where convert_hf_to_gguf.py and its vendored gguf-py live ($TUNELINE_LLAMA_CPP_DIR wins)."""
    env = os.environ.get("TUNELINE_LLAMA_CPP_DIR")
    path = Path(env) if env else Path(sys.prefix) / "share" / "tuneline" / "llama.cpp"
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(
            f"llama.cpp's converter is not at {path / 'convert_hf_to_gguf.py'}: run `make setup` or "
            f"`scripts/install_llama_cpp.sh {sys.prefix}` (or set TUNELINE_LLAMA_CPP_DIR to a llama.cpp checkout)"
        )
    return path


def _base_type(qtype: str) -> str:
    name = qtype.upper()
    if name not in BASE_TYPES:
        raise ValueError(f"'{qtype}' cannot be converted directly: the first type must be one of {', '.join(BASE_TYPES)}")
    return name


def convert(model_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py on a HF dir; returns the GGUF path."""
    from tuneline.train.bottleneck import refuse  # here: it imports peft, which the export needs nowhere else

    refuse(model_dir, "exported to GGUF")  # an adapter that adds layers has no GGUF form
    args = [str(model_dir), "--outtype", _base_type(outtype).lower()]
    return run_converter(converter_dir() / "convert_hf_to_gguf.py", args, Path(out_file))


def run_converter(script: Path, args: list[str], out_file: Path) -> Path:
    """Run one of llama.cpp's converter scripts (convert_hf_to_gguf.py, convert_lora_to_gguf.py) into out_file."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a failed or killed run never leaves half a GGUF.
    part = out_file.with_name(out_file.name + ".part")
    cmd = [sys.executable, str(script), *args, "--outfile", str(part)]
    env = dict(os.environ)
    # The vendored gguf-py must win over the PyPI `gguf`: the converter is written against it,
    # and the PyPI release can lag behind the architectures and keys this converter emits.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(script.parent / "gguf-py"), env.get("PYTHONPATH")]))
    env.pop("NO_LOCAL_GGUF", None)
    # transformers would take a model_dir that does not exist for a hub id and try to download it.
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not part.is_file():
        part.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise ExportError(f"{script.name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    part.replace(out_file)
    return out_file


def require_llama_cpp_without_amx() -> None:
    """Refuse, before any file is loaded, a llama.cpp built with its AMX backend: on CPUs with AMX its matmul on
    quantized files segfaults (ggml-org/llama.cpp#20824), which would kill the whole run, not fail one step."""
    import llama_cpp

    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        raise ExportError(f"llama-cpp-python in {sys.prefix} was built with llama.cpp's AMX backend, which crashes on "
                          f"quantized GGUF files on this CPU: rebuild it without, `bash scripts/install_llama_cpp.sh "
                          f"{sys.prefix}` (it checks the build and rebuilds it, several minutes)")


# --- quantizing ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _llama_log(level: int = logging.DEBUG):
    """Collect llama.cpp's log (it prints through a Python callback to sys.stderr) for error messages.

    DEBUG, because llama-cpp-python 0.3.36 maps ggml's log levels off by one (ggml ERROR arrives
    as logging.DEBUG), so any stricter level drops exactly the error lines we want.
    """
    import llama_cpp._logger as llog

    buf, old = io.StringIO(), llog.logger.level
    llog.logger.setLevel(level)
    try:
        with contextlib.redirect_stderr(buf):
            yield buf
    finally:
        llog.logger.setLevel(old)


def _error_lines(logtext: str, n: int = 5) -> str:
    """The log lines that say what went wrong (the full log is hundreds of lines per model)."""
    lines = logtext.strip().splitlines()
    errors = [line for line in lines if re.search(r"fail|error|invalid|disabled", line, re.I)]
    return "\n".join((errors or lines)[-n:])


def quantize(src: str | Path, dst: str | Path, qtype: str) -> Path:
    """Quantize a f16/bf16/f32 GGUF to `qtype` with llama.cpp's own quantizer."""
    import llama_cpp

    name = qtype.upper()
    if name not in GGUF_FTYPES:
        raise ValueError(f"unknown GGUF type '{qtype}': known {', '.join(GGUF_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_FTYPES[name]
    params.nthread = os.cpu_count() or 1
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with _llama_log() as logbuf:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    notes = logbuf.getvalue()
    if rc != 0 or not Path(dst).is_file():
        Path(dst).unlink(missing_ok=True)
        raise ExportError(f"llama_model_quantize({src} -> {dst}, {name}) returned {rc}: {_error_lines(notes)}")
    # K-quants need rows divisible by 256; llama.cpp silently falls back for other tensors.
    fallback = re.search(r"WARNING: (\d+ of \d+ tensor\(s\) required fallback quantization)", notes)
    if fallback:
        log.warning("%s: %s", Path(dst).name, fallback.group(1))
    return Path(dst)


# --- reading a GGUF back ------------------------------------------------------------------------


def read_metadata(path: str | Path) -> dict:
    """Architecture, file type, chat template, bos/eos ids and texts, and whether the tokenizer puts BOS first,
    as llama.cpp reads them (its vocabulary only: seconds even for a 262k vocabulary, where gguf-py's reader
    takes about 40 s parsing every token)."""
    import llama_cpp

    with _llama_log():
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        md = llm.metadata

        def number(key: str) -> int | None:
            return int(md[key]) if key in md else None

        meta = {
            "architecture": md.get("general.architecture"),
            "file_type": number("general.file_type"),
            "chat_template": md.get("tokenizer.chat_template"),
            "bos_token_id": number("tokenizer.ggml.bos_token_id"),
            "eos_token_id": number("tokenizer.ggml.eos_token_id"),
            "add_bos_token": llm._model.add_bos_token(),  # what llama.cpp (and so Ollama) does, key or default
        }
        for kind in ("bos", "eos"):
            tid = meta[f"{kind}_token_id"]
            meta[f"{kind}_token"] = llm._model.token_get_text(tid) if tid is not None else None
    finally:
        llm.close()
    return meta


# --- checking a GGUF by asking it questions -----------------------------------------------------


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def check(path: str | Path, conversations: list[list[dict]], answers: list[str], max_tokens: int,
          n_ctx: int = 2048, metric: str = "exact_match") -> GGUFCheck:
    """Greedy answers from llama.cpp through the GGUF's own chat template, scored by the task metric."""
    import llama_cpp

    if len(conversations) != len(answers) or not conversations:
        raise ValueError(f"need as many answers as conversations, at least one: got {len(conversations)} and {len(answers)}")
    start = time.monotonic()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, n_threads=os.cpu_count())
    try:
        # Without an embedded template llama-cpp-python guesses a format; that would test the guess.
        if "tokenizer.chat_template" not in llm.metadata:
            raise ExportError(f"{path} has no tokenizer.chat_template: the converter found no chat template in the HF dir")
        samples = [_ask(llm, conv, ans, max_tokens) for conv, ans in zip(conversations, answers)]
    finally:
        llm.close()  # frees the llama.cpp model and context now, not whenever GC runs
    n = len(samples)
    scores = score_items([s.predicted for s in samples], [s.expected for s in samples], metric)
    return GGUFCheck(
        score=sum(scores) / n,
        eos_share=sum(s.finish_reason == "stop" for s in samples) / n,
        samples=samples,
        per_item=scores,
        seconds=round(time.monotonic() - start, 3),
    )


def _ask(llm, messages: list[dict], answer: str, max_tokens: int) -> ExportSample:
    out = llm.create_chat_completion(messages=messages, temperature=0, max_tokens=max_tokens)
    choice = out["choices"][0]
    return ExportSample(prompt=_last_user(messages), expected=answer,
                      predicted=choice["message"]["content"] or "", finish_reason=choice["finish_reason"] or "")


# --- Ollama -------------------------------------------------------------------------------------


def write_modelfile(gguf_path: str | Path, metadata: dict, conversation: list[dict]) -> Path:
    """An Ollama Modelfile beside the GGUF (`<stem>.Modelfile`, so several types share one dir), in the GGUF's
    chat template family (tuneline.model.templates.modelfile). `conversation` is a held-out prompt as training
    rendered it: its system turn is the SYSTEM (an empty one: none), and Ollama's prompt for it must be the
    GGUF template's text, else TemplateError says why no Modelfile was written."""
    gguf_path = Path(gguf_path)
    template = templates.foreign(metadata.get("chat_template") or "", metadata.get("eos_token") or "",
                                 bool(metadata.get("add_bos_token")), "the GGUF's chat template")
    system = conversation[0]["content"] if conversation and conversation[0]["role"] == "system" else None
    bos = metadata.get("bos_token") if metadata.get("add_bos_token") else None
    text = templates.modelfile(template, gguf_path.name, system, conversation, bos_token=bos)
    out = gguf_path.with_suffix(".Modelfile")
    out.write_text(text)
    return out


def _add_modelfile(entry: ExportFile, probe: Probe) -> None:
    """Best effort, after the verdict: a file that passed stays passed; without a Modelfile it says why."""
    if not probe.conversations:  # a text task (evaluate.metric perplexity)
        entry.modelfile_note = ("no Modelfile: a text task has no held-out prompt to check Ollama's template "
                                "against; the file serves raw-text completions (llama.cpp's /completion)")
        return
    try:
        entry.modelfile = str(write_modelfile(entry.path, read_metadata(entry.path), probe.conversations[0]))
    except Exception as exc:  # noqa: BLE001  (nothing about the Modelfile may reject a checked file)
        entry.modelfile_note = f"no Modelfile: {exc}"
        log.warning("%s: %s", Path(entry.path).name, entry.modelfile_note)


# --- the whole export ---------------------------------------------------------------------------


def _make_and_check(entry: ExportFile, make, probe: Probe, gate: Gate, ask: bool = True) -> ExportFile:
    """Make one file and check it; any failure becomes passed=False with the error as reason. ask False: judged on
    its perplexity for now, the task rows asked later if it turns out to ship (`_settle_converted`)."""
    start = time.monotonic()
    # llama-cpp-python's llama.cpp made, quantized and checked the file; gguf-py is the converter's.
    entry.versions = package_versions("llama_cpp_python", "gguf", "transformers")
    try:
        path = make()
        entry.size_bytes, entry.sha256 = path.stat().st_size, sha256_file(path)
        if probe.ppl_ids and gate.reference_ppl:
            from tuneline.eval.perplexity import gguf_scorer

            with gguf_scorer(path, probe.ppl_ids) as score:
                judge_perplexity(entry, score, [len(ids) - 1 for ids in probe.ppl_ids], gate)
        if probe.task_ids:  # a text task: the held-out documents' perplexity is the task score
            from tuneline.eval.perplexity import gguf_perplexity

            task = gguf_perplexity(path, probe.task_ids)
            entry.score, entry.per_item, entry.ask_seconds = task.ppl, task.per_item, task.seconds
        elif gate.ppl_rejects(entry) or not ask:  # ~45 s of generation that cannot change the verdict (yet)
            entry.asked = False
        else:
            _ask_rows(entry, probe)
        entry.passed, entry.reason = verdict(entry, gate)
    except Exception as exc:  # one broken type must not hide the results of the others
        entry.passed, entry.reason = False, f"{type(exc).__name__}: {exc}"
    if entry.passed:
        _add_modelfile(entry, probe)
    entry.seconds = round(time.monotonic() - start, 3)
    log.info("%s: %s (%s)", entry.qtype, "passed" if entry.passed else "REJECTED", entry.reason)
    return entry


def _ask_rows(entry: ExportFile, probe: Probe) -> None:
    result = check(entry.path, probe.conversations, probe.answers, probe.max_tokens, metric=probe.metric)
    entry.score, entry.eos_share, entry.samples = result.score, result.eos_share, result.samples
    entry.per_item, entry.asked, entry.ask_seconds = result.per_item, True, result.seconds


def ask_deferred(entry: ExportFile, probe: Probe, gate: Gate) -> None:
    """The task rows of a converted file judged so far on its perplexity alone, and its verdict on them."""
    try:
        _ask_rows(entry, probe)
        entry.passed, entry.reason = verdict(entry, gate)
    except Exception as exc:  # as in _make_and_check: the file is rejected with the error, the export goes on
        entry.passed, entry.reason = False, f"{type(exc).__name__}: {exc}"
    if entry.passed:
        _add_modelfile(entry, probe)


def _settle_converted(converted: ExportFile, quantized: list[ExportFile], probe: Probe, gate: Gate) -> None:
    """The converted file (F16/BF16/F32) is the merged model's weights in another container: its perplexity,
    judged at the tight lossless limit on the same token ids, is what can go wrong in it, and its chat template and
    stop token are the ones every quantized file copies. Its 200 task rows (~25-50 s on the default run) are asked
    only when it would ship, i.e. no smaller file passed; otherwise the reason says which one passed and ships."""
    if not converted.passed:
        return  # its perplexity rejected it
    smaller = shipped(quantized)
    if smaller is None:
        ask_deferred(converted, probe, gate)
        return
    converted.reason += (f"; task rows not asked: {smaller.qtype}, smaller and made from it, passed them and "
                         "ships (asked should it stop shipping)")


def _validate_types(types: list[str], auto_types: list[str] = ()) -> list[str]:
    names = [t.upper() for t in types]
    if not names:
        raise ValueError("no GGUF types to export")
    _base_type(names[0])
    unknown = [t for t in names + [a.upper() for a in auto_types] if t not in GGUF_FTYPES and t != "AUTO"]
    if unknown:
        raise ValueError(f"unknown GGUF types {unknown}: known {', '.join(GGUF_FTYPES)} (and auto)")
    if len(set(names)) != len(names):
        raise ValueError(f"GGUF types repeat: {types}")
    if "AUTO" in names and not auto_types:
        raise ValueError("gguf_types has auto but export.auto_types is empty: list the types auto may pick from")
    return names


def export_files(model_dir: str | Path, out_dir: str | Path, types: list[str], probe: Probe, gate: Gate,
                 name: str = "model", auto_types: list[str] = ()) -> list[ExportFile]:
    """Convert to types[0], quantize to the rest, check every file; one ExportFile per type tried, in order.

    `auto` in `types` tries `auto_types` (smallest first) and stops at the first that passes the gate:
    every type tried stays in the result, rejected ones with their reason, the pick with auto="picked".
    """
    names = _validate_types(types, auto_types)
    require_llama_cpp_without_amx()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each type is at most the model's size on disk (F16 of a float16 merge); auto may try all its types.
    need_free({out_dir: dir_bytes(model_dir) * (len(names) + len(auto_types)) + MARGIN}, "GGUF export")
    base = out_dir / f"{name}-{names[0]}.gguf"
    # Without the converted file there is nothing to quantize from: a convert failure raises.
    start = time.monotonic()
    convert(model_dir, base, names[0])
    # The converted file's task rows wait until it is known whether a smaller file ships (_settle_converted);
    # only with the perplexity check on, which then judges it, and only for chat rows (a text task's score is
    # its perplexity, measured anyway).
    defer = len(names) > 1 and bool(probe.conversations and probe.ppl_ids and gate.reference_ppl)
    results = [_make_and_check(ExportFile(format="gguf", qtype=names[0], path=str(base)), lambda: base, probe, gate,
                               ask=not defer)]
    results[0].seconds = round(time.monotonic() - start, 3)  # the conversion counts as making it

    def make(qtype: str, auto: str = "") -> ExportFile:
        dst = out_dir / f"{name}-{qtype}.gguf"
        return _make_and_check(ExportFile(format="gguf", qtype=qtype, path=str(dst), auto=auto),
                               lambda: quantize(base, dst, qtype), probe, gate)

    for qtype in names[1:]:
        if qtype != "AUTO":
            results.append(make(qtype))
            continue
        for candidate in [t.upper() for t in auto_types if t.upper() not in names]:
            results.append(make(candidate, auto="tried"))
            if results[-1].passed:
                results[-1].auto = "picked"
                break
        else:
            log.warning("auto: none of %s passed the gate; see each file's reason", list(auto_types))
    if defer:
        _settle_converted(results[0], results[1:], probe, gate)
    return results


def benchmark_shipped(files: list[ExportFile], checks: ExportChecks) -> ExportFile | None:
    """MMLU / GSM8K on the file that ships (records.shipped), the only one the promotion reports them for: 71-76 s
    per file on the default CPU run. Every other file says why they did not run (not a score of zero)."""
    from tuneline.eval.harness import run_gguf_benchmarks

    ship = shipped(files)
    for f in files:
        if f is ship:
            f.benchmarks = run_gguf_benchmarks(f.path, checks)
        else:
            f.benchmarks_note = (f"not run (only the file that ships, {ship.candidate}, is benchmarked)" if ship else
                                 "not run (no GGUF file passed its checks: none ships)")
    return ship


def export_gguf(model_dir: str, out_dir: Path, records: list[dict], cfg: ExportConfig,
                checks: ExportChecks, reference: MergedReference | None = None) -> ExportResult:
    """Convert, quantize and check every file against the merged model (`reference`, the score_merged step's;
    without one it is scored here): task metric, EOS, and perplexity on the checks' general texts. The file that
    ships is then served and, with export.benchmarks, runs the evaluation's MMLU / GSM8K."""
    rows = checked_rows(records, cfg.check_rows)
    merged = reference_for(model_dir, rows, checks, reference)
    if merged.task_ids:  # a text task: scored on its documents' token ids, nothing to ask
        probe = Probe(conversations=[], answers=[], max_tokens=checks.max_new_tokens, metric=checks.metric,
                      ppl_ids=merged.ppl_ids, task_ids=merged.task_ids)
    else:
        probe = Probe(conversations=[messages(r, with_answer=False) for r in rows],
                      answers=[r["assistant"] for r in rows], max_tokens=checks.max_new_tokens,
                      metric=probe_metric(rows, checks.metric), ppl_ids=merged.ppl_ids)
    gate = gate_for(cfg, merged)
    files = export_files(model_dir, out_dir, cfg.gguf_types, probe, gate, auto_types=cfg.auto_types)
    if probe.conversations:
        # Served by llama.cpp's server, asked through the openai client; a file that was not asked its rows yet
        # (the converted one, when the smaller file it stood behind fails serving) is asked them first.
        serve_shipped(files, probe, cfg.serve_rows, ask=lambda f: ask_deferred(f, probe, gate))
    else:
        log.info("serving check skipped: a text task (evaluate.metric perplexity) has no prompts to ask the server")
    if checks.benchmarks:
        benchmark_shipped(files, checks)
    return merged.result("gguf", files)
