"""The serving check: a GGUF file served the way users run it, asked the gate's questions through a real client.

    check = serve_check(file, probe, rows=50)   # ServeCheck: served answers == the gate's, each ended by a stop
    serve_shipped(files, probe, rows=50)        # export_gguf runs this after the gate (export.serve_rows)

    # what the check starts, and what a user runs in the export dir:
    python -m llama_cpp.server --model model-Q8_0.gguf --host 127.0.0.1 --port 8000
    ollama create tuneline-q8_0 -f model-Q8_0.Modelfile && ollama run tuneline-q8_0

llama.cpp's OpenAI-compatible server (llama-cpp-python's `server` extra) runs in its own process on
127.0.0.1 and a free port; the official `openai` client sends each held-out conversation as a chat
completion at temperature 0 and the gate's max_tokens. The file passes only if every served answer is
the gate's in-process answer and ended by a stop (finish_reason "stop", not "length"): a server that
applies another template or misses the stop token is caught here, not by the first user. The one
exception: an answer cut at max_tokens in process too (a gold answer longer than data.max_new_tokens,
e.g. a 17-token Banking77 label under a data.max_new_tokens of 16) is counted as `cut_as_gate`, not as a failure;
the gate's EOS share already judges it. The server
is always stopped; a failure marks the file (passed False, the reason), it never fails the export.

The same check works against any OpenAI-compatible server, e.g. vLLM on a GPU
(`vllm serve ./model-Q8_0.gguf --tokenizer MERGED_DIR`, then `ask(url, ...)`); it is not run here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tuneline.export.gate import Probe
from tuneline.export.records import ExportFile, ServeCheck, shipped
from tuneline.progress import progress

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0  # loading a 1.7B Q8_0 file on a busy CPU takes tens of seconds
REQUEST_TIMEOUT_S = 600.0
MAX_MISMATCHES = 5
# The gate asks llama.cpp with create_chat_completion's default repeat_penalty (1.0); the server's
# default is 1.1, so the check sends 1.0 to ask exactly what the gate asked.
SAMPLING = {"repeat_penalty": 1.0}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str | Path, port: int = 8000, n_ctx: int = 2048, n_threads: int | None = None) -> list[str]:
    """llama.cpp's OpenAI-compatible server on `model` (the chat template comes from the GGUF)."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx)]
    return cmd + (["--n_threads", str(n_threads)] if n_threads else [])


def user_commands(file: ExportFile) -> tuple[str, str]:
    """The commands to serve `file` from its export dir: llama.cpp's server, and Ollama with its Modelfile
    ("" when the file has none: ExportFile.modelfile_note says why)."""
    server = shlex.join(["python", *server_command(Path(file.path).name)[1:]])
    if not file.modelfile:
        return server, ""
    tag = f"tuneline-{file.qtype.lower()}"
    return server, f"ollama create {tag} -f {Path(file.modelfile).name} && ollama run {tag}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(logfile) -> str:
    logfile.seek(0)
    return "\n".join(logfile.read().decode(errors="replace").strip().splitlines()[-8:])


@contextlib.contextmanager
def llama_server(model: str | Path, n_ctx: int = 2048, timeout: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Start llama.cpp's server on a free port, wait until it answers, yield its base URL (…/v1); stop it
    on exit, whatever happened (terminate, then kill)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile() as logfile:
        proc = subprocess.Popen(server_command(model, port, n_ctx, os.cpu_count()), stdout=logfile,
                                stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not _ready(url):
                if proc.poll() is not None:
                    raise RuntimeError(f"llama.cpp server exited with {proc.returncode}: {_tail(logfile)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama.cpp server not ready after {timeout:.0f}s: {_tail(logfile)}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ask(url: str, conversations: list[list[dict]], max_tokens: int) -> list[tuple[str, str]]:
    """(answer, finish_reason) per conversation from an OpenAI-compatible server, greedy."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="not-needed", timeout=REQUEST_TIMEOUT_S, max_retries=0)
    out = []
    for conv in progress(conversations, "serving check", "prompt"):
        res = client.chat.completions.create(model="served", messages=conv, temperature=0, max_tokens=max_tokens,
                                             extra_body=SAMPLING)
        choice = res.choices[0]
        out.append((choice.message.content or "", choice.finish_reason or ""))
    return out


def serve_check(file: ExportFile, probe: Probe, rows: int | None = None) -> ServeCheck:
    """Serve `file`, ask it the first `rows` of the gate's prompts (None: all) and compare every served answer
    with the gate's in-process one (file.samples)."""
    server, ollama = user_commands(file)
    conversations = probe.conversations[:rows]
    check = ServeCheck(n=len(conversations), command=server, ollama=ollama)
    start = time.monotonic()
    try:
        with llama_server(file.path) as url:
            served = ask(url, conversations, probe.max_tokens)
        check.served = True
    except Exception as exc:  # a server that does not start or answer marks the file; the export goes on
        check.error = f"{type(exc).__name__}: {exc}"
        served = []
    for sample, (answer, reason) in zip(file.samples, served):
        same, stopped = answer == sample.predicted, reason == "stop"
        cut_as_gate = reason == sample.finish_reason == "length"
        check.identical += same
        check.stopped += stopped
        check.cut_as_gate += cut_as_gate
        if not (same and (stopped or cut_as_gate)) and len(check.mismatches) < MAX_MISMATCHES:
            check.mismatches.append(f"{sample.prompt[:60]!r}: gate {sample.predicted[:60]!r}, "
                                    f"served {answer[:60]!r} ({reason})")
    check.seconds = round(time.monotonic() - start, 3)
    return check


def serve_shipped(files: list[ExportFile], probe: Probe, rows: int | None = None,
                  ask: Callable[[ExportFile], None] | None = None) -> ExportFile | None:
    """Run the serving check (`rows` prompts, None: all) on the file that ships (records.shipped: the smallest
    passing GGUF file). A failure marks that file as not passed and the next smallest is served in its place, so
    whatever ships was served; None when no file passes. `ask`: the gate's task rows for a file that was passed on
    its perplexity alone (export_files' converted file), run before it is served."""
    while (file := shipped(files)) is not None:
        if not file.asked and ask is not None:
            ask(file)
            continue  # its verdict may have changed: shipped() again
        file.serve = check = serve_check(file, probe, rows)
        log.info("serving check on %s: %s/%s identical, %s/%s stopped (%.1fs)\n  serve it: %s\n  or: %s",
                 Path(file.path).name, check.identical, check.n, check.stopped, check.n, check.seconds,
                 check.command, check.ollama)
        if check.ok:
            return file
        file.passed = False
        why = check.error or (f"{check.identical}/{check.n} served answers equal the gate's, "
                              f"{check.stopped}/{check.n} ended by a stop ({check.cut_as_gate} cut at max_tokens "
                              "as in the gate); " + "; ".join(check.mismatches))
        file.reason = f"serving check failed: {why}"
    return None
