"""The merged model's reference, scored once and shared by the exports; MMLU / GSM8K only on the file that ships.

    OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/integration/test_merged_reference.py    # ~15 s on 2 cores

On the tiny random model: the score_merged function's reference is taken by export_gguf as is (the merged model is
not scored again, and every verdict equals the one the export reaches scoring it itself), a reference of other rows
is refused, and only the smallest passing GGUF file (records.shipped) runs the benchmarks.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tuneline.config import EvaluateConfig, ExportConfig, MMLUConfig  # noqa: E402
from tuneline.dashboard import run_summary  # noqa: E402
from tuneline.eval.perplexity import PinnedTexts  # noqa: E402
from tuneline.eval.report import EvalReport  # noqa: E402
from tuneline.export import gate  # noqa: E402
from tuneline.export.gguf import benchmark_shipped, export_gguf  # noqa: E402
from tuneline.export.records import ExportFile, shipped  # noqa: E402

TEXTS = ["My card was lost yesterday and I need a new one.", "How long does a transfer to another bank take?"]
EXPORT = ExportConfig(gguf_types=["f16"], check_rows=2, benchmarks=False)


@pytest.fixture(scope="module")
def rows(tiny_data) -> list[dict]:
    return tiny_data.task[tiny_data.task.split == "eval"].to_dict("records")


@pytest.fixture(scope="module")
def checks() -> gate.ExportChecks:
    texts = PinnedTexts(rows=2, min_words=1, texts=TEXTS)  # as a run's general_text snapshot pins them
    return gate.ExportChecks(perplexity=texts, max_new_tokens=4)


@pytest.fixture(scope="module")
def reference(tiny_ref, rows, checks):
    return gate.merged_reference(tiny_ref.path, gate.checked_rows(rows, EXPORT.check_rows), checks)


@pytest.fixture(scope="module")
def shared(tiny_ref, rows, checks, reference, tmp_path_factory):
    """export_gguf given the reference, and how many times it scored the merged model itself (gate.merged_reference
    is what every export calls without one)."""
    calls, real = [], gate.merged_reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gate, "merged_reference", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        res = export_gguf(tiny_ref.path, tmp_path_factory.mktemp("gguf"), rows, EXPORT, checks, reference)
    return res, calls


def test_the_export_takes_the_reference_and_judges_as_if_it_scored_it(tiny_ref, rows, checks, reference, shared):
    res, calls = shared
    assert calls == [] and res.reference == reference.task and res.reference_perplexity == reference.perplexity
    [f16] = res.files
    assert f16.perplexity_increase is not None  # judged on the reference's token ids
    own = gate.reference_for(tiny_ref.path, rows[:2], checks)  # no reference given: scored here (the CLI)
    assert own.task.per_item == reference.task.per_item and own.perplexity.per_item == reference.perplexity.per_item
    assert gate.verdict(f16, gate.gate_for(EXPORT, own)) == (f16.passed, f16.reason)


def test_a_reference_of_other_rows_or_checks_is_refused(tiny_ref, rows, checks, reference):
    with pytest.raises(ValueError, match="scored on other rows or checks"):
        gate.reference_for(tiny_ref.path, rows[:1], checks, reference)
    with pytest.raises(ValueError, match="score_merged output"):
        gate.reference_for(tiny_ref.path, rows[:2], checks.with_length(8), reference)


def test_only_the_shipped_file_is_benchmarked(shared):
    """The smallest passing GGUF file ships: it alone runs MMLU / GSM8K; the others say they did not (not zero)."""
    path = shared[0].files[0].path
    big = ExportFile(format="gguf", qtype="F16", path=path, size_bytes=300, passed=True, reason="fine")
    small = big.model_copy(update={"qtype": "Q8_0", "size_bytes": 200})
    rejected = big.model_copy(update={"qtype": "Q4_K_M", "size_bytes": 100, "passed": False, "reason": "too far"})
    gptq = ExportFile(format="gptq", qtype="W4G32", path="model", size_bytes=50, passed=True)
    files = [big, small, rejected, gptq]
    assert shipped(files) is small and shipped([rejected, gptq]) is None
    cfg = EvaluateConfig(mmlu=MMLUConfig(subjects=["marketing"], limit_per_subject=2), gsm8k=None, perplexity=None)
    assert benchmark_shipped(files[:3], gate.ExportChecks.of(cfg, ExportConfig())) is small
    assert list(small.benchmarks) == ["mmlu"] and small.benchmarks["mmlu"].n == 2 and not small.benchmarks_note
    for f in (big, rejected):
        assert f.benchmarks == {}
        assert f.benchmarks_note == "not run (only the file that ships, gguf-Q8_0, is benchmarked)"
    report = EvalReport.model_validate({"task": {"base": {"score": 0, "n": 0, "per_item": [], "item_ids": [],
                                                          "predictions": [], "seconds": 0}},
                                        "task_vs_base": {}, "benchmarks": {}, "benchmarks_vs_base": {}, "final": "base",
                                        "seconds": 0})
    summary = run_summary(report, files[:3], "not promoted", None)
    assert f"{Path(path).name}: 0.0 MB, score 0.0%, passed; MMLU/GSM8K not run (only the file that ships" in summary
