"""The serving check on the tiny model's GGUF: llama.cpp's OpenAI-compatible server, the official openai client."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tuneline.config import BaseModelConfig  # noqa: E402
from tuneline.dashboard import evaluation_report, run_summary  # noqa: E402
from tuneline.eval.report import EvalReport  # noqa: E402
from tuneline.eval.task import TaskResult  # noqa: E402
from tuneline.export import gguf  # noqa: E402
from tuneline.export.gate import Probe  # noqa: E402
from tuneline.export.records import ExportFile  # noqa: E402
from tuneline.export.serve import llama_server, serve_check, serve_shipped, user_commands  # noqa: E402
from tuneline.model.base import prepare  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "Classify the banking intent: my card is lost"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Classify the banking intent: top up failed"}],
    [{"role": "user", "content": "Which intent: I was charged twice"}],
]


@pytest.fixture(scope="module")
def q8(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve")
    f16 = gguf.convert(Path(prepare(BaseModelConfig(source="tiny")).path), out / "tiny-F16.gguf", "f16")
    return gguf.quantize(f16, out / "tiny-Q8_0.gguf", "Q8_0")


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe(conversations=CONVERSATIONS, answers=["lost_card", "top_up_failed", "duplicate_charge"], max_tokens=12)


def tiny_report() -> EvalReport:
    base = TaskResult(score=0.0, n=3, per_item=[0.0] * 3, item_ids=["0", "1", "2"], predictions=[""] * 3, seconds=0)
    return EvalReport(task={"base": base}, task_vs_base={}, benchmarks={}, benchmarks_vs_base={}, final="base", seconds=0)


def gate_file(path: Path, probe: Probe) -> ExportFile:
    """The file as the gate leaves it: its in-process answers (and their finish reasons) in samples."""
    res = gguf.check(path, probe.conversations, probe.answers, probe.max_tokens)
    return ExportFile(format="gguf", qtype="Q8_0", path=str(path), size_bytes=path.stat().st_size,
                      samples=res.samples, passed=True, reason="gate passed",
                      modelfile=str(path.with_suffix(".Modelfile")))


def test_served_answers_equal_the_gates(q8, probe):
    file = gate_file(q8, probe)
    check = serve_check(file, probe)
    assert check.served, check.error
    assert check.n == 3 and check.identical == 3, check.mismatches
    # The random tiny model rarely stops in 12 tokens: the server must say so exactly as the gate did.
    assert check.stopped == sum(s.finish_reason == "stop" for s in file.samples)
    assert "-m llama_cpp.server --model tiny-Q8_0.gguf --host 127.0.0.1 --port 8000" in check.command
    assert check.ollama == "ollama create tuneline-q8_0 -f tiny-Q8_0.Modelfile && ollama run tuneline-q8_0"
    # The final report (HTML, Markdown) and the run summary show the figure and the command to serve the file.
    file.serve = check
    page = evaluation_report(tiny_report(), "not promoted", [file])
    summary = run_summary(tiny_report(), [file], "not promoted", None)
    figure = f"3/3 served answers equal to the gate's, {check.stopped} stopped by a stop token"
    assert all(figure in text for text in (page.html, page.markdown, summary)), page.markdown
    assert all(check.command in text for text in (page.markdown, summary)) and check.ollama in page.markdown


def test_a_changed_answer_or_no_stop_marks_the_file(q8, probe):
    file = gate_file(q8, probe)
    larger = file.model_copy(update={"qtype": "F16", "size_bytes": file.size_bytes * 2}, deep=True)
    file.samples[1].predicted += " (not what the server says)"
    # The smallest passing file is served first; it fails, so the next smallest is served and ships instead.
    assert serve_shipped([larger, file], probe) is larger
    assert larger.serve.ok and larger.passed and file.serve is not None
    assert not file.passed and file.reason.startswith("serving check failed: 2/3 served answers equal the gate's")
    assert "top up failed" in file.reason
    assert f"{file.serve.stopped}/3 ended by a stop" in file.reason


def test_cut_where_the_gate_was_cut_passes_cut_where_it_stopped_fails(q8, probe):
    """An answer longer than max_tokens is cut in process and when served alike (raise export.max_new_tokens);
    a served answer cut where the gate's stopped is the stop-token bug the check exists for."""
    file = gate_file(q8, probe)
    cut = [s for s in file.samples if s.finish_reason == "length"]
    assert cut, "the random tiny model should run into max_tokens on at least one prompt"
    check = serve_check(file, probe)
    assert check.ok and check.cut_as_gate == len(cut) and check.stopped + check.cut_as_gate == 3, check
    cut[0].finish_reason = "stop"
    check = serve_check(file, probe)
    assert not check.ok and check.cut_as_gate == len(cut) - 1


def test_a_server_that_cannot_start_marks_the_file_and_is_stopped(tmp_path, probe):
    bad = tmp_path / "broken-Q8_0.gguf"
    bad.write_bytes(b"GGUF not really")
    file = ExportFile(format="gguf", qtype="Q8_0", path=str(bad), passed=True, samples=[])
    serve_shipped([file], probe)
    assert not file.passed and not file.serve.served
    assert file.reason.startswith("serving check failed: RuntimeError: llama.cpp server exited with")
    assert user_commands(file) == ("python -m llama_cpp.server --model broken-Q8_0.gguf --host 127.0.0.1 --port 8000 "
                                   "--n_ctx 2048", "")  # no Modelfile, no Ollama command


def test_the_server_is_stopped_when_the_block_fails(q8):
    with pytest.raises(KeyError), llama_server(q8) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        raise KeyError("a failure inside the block")
    import socket

    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nobody listens: the server is gone
        s.connect(("127.0.0.1", port))


def test_serve_rows_asks_the_first_rows_only(q8, probe):
    """export.serve_rows: the check asks that many of the gate's prompts, and judges exactly those."""
    file = gate_file(q8, probe)
    file.samples[2].predicted += " (a row the check does not ask)"
    check = serve_check(file, probe, rows=2)
    assert check.ok and check.n == check.identical == 2, check
    assert not serve_check(file, probe).ok  # all rows: the changed third answer is caught


def test_a_file_passed_on_perplexity_alone_is_asked_before_it_is_served(q8, probe):
    """The converted file waits for its task rows while a smaller file ships (export_files); when that one fails
    serving, it becomes the file that ships and is asked the rows first, then served."""
    file = gate_file(q8, probe)
    larger = file.model_copy(update={"qtype": "F16", "size_bytes": file.size_bytes * 2, "asked": False,
                                     "samples": []}, deep=True)
    file.samples[0].predicted += " (not what the server says)"
    asked = []

    def ask(f):
        asked.append(f.qtype)
        f.samples, f.asked = gate_file(q8, probe).samples, True

    assert serve_shipped([larger, file], probe, ask=ask) is larger
    assert asked == ["F16"] and larger.serve.ok and not file.passed
