"""A token-F1 task through the report, the export gate and the promotion: generated examples beside the gold
answers, the gate's tolerance and the promotion's gain in metric points.

    .venv/bin/pytest -q tests/unit/test_generation_report.py
"""

import numpy as np

from tuneline.config import ExportConfig, PromoteConfig
from tuneline.dashboard import EXAMPLES, evaluation_html, evaluation_markdown, examples
from tuneline.eval.report import EvalReport
from tuneline.eval.scoring import token_f1
from tuneline.eval.stats import paired_bootstrap
from tuneline.eval.task import TaskResult
from tuneline.export.gate import gate_for, verdict
from tuneline.export.records import ExportFile, MergedReference
from tuneline.promote import decide

N = 40
GOLDS = [f"answer number {i} is <fine> & short" for i in range(N)]
PROMPTS = [f"Write answer {i}." for i in range(N)]


def _task(predictions: list[str], with_text: bool = True) -> TaskResult:
    scores = [token_f1(p, g) for p, g in zip(predictions, GOLDS)]
    extra = {"references": GOLDS, "prompts": PROMPTS} if with_text else {}
    return TaskResult(score=float(np.mean(scores)), n=N, per_item=scores, item_ids=[f"a.json:{i}" for i in range(N)],
                      predictions=predictions, seconds=0, metric="token_f1", **extra)


def _report(with_text: bool = True) -> EvalReport:
    base = _task(["something else entirely"] * N, with_text)
    final = _task([f"answer number {i} is fine" for i in range(N)], with_text)
    return EvalReport(task={"base": base, "sft": final}, task_vs_base={"sft": paired_bootstrap(final.per_item,
                      base.per_item, resamples=200)}, benchmarks={}, benchmarks_vs_base={}, final="sft", seconds=1)


def test_the_report_shows_the_first_generated_answers_beside_the_gold():
    rep = _report()
    shown = examples(rep)
    assert len(shown) == EXAMPLES and [e["id"] for e in shown] == [f"a.json:{i}" for i in range(EXAMPLES)]
    assert shown[1] == {"id": "a.json:1", "prompt": "Write answer 1.", "gold": GOLDS[1],
                        "base": "something else entirely", "base_score": 0.0, "final": "answer number 1 is fine",
                        "final_score": token_f1("answer number 1 is fine", GOLDS[1])}
    page = evaluation_html(rep, "x")
    assert "<h3>Examples (the first 4 eval rows; token_f1 in brackets)</h3>" in page
    assert "answer number 0 is &lt;fine&gt; &amp; short" in page and "answer number 3 is fine (0.91)" in page
    md = evaluation_markdown(rep)
    assert md.splitlines()[0].startswith("| candidate | task token_f1 (n=40) |")
    assert "### Examples" in md and "| a.json:2 | Write answer 2. | answer number 2 is <fine> & short |" in md
    blank = rep.model_copy(update={"task": {**rep.task, "sft": rep.task["sft"].model_copy(
        update={"predictions": ["\n\n"] * N})}})
    assert "<td>(empty) (0.91)</td>" in evaluation_html(blank)  # whitespace only: said as such, not a blank cell
    old = _report(with_text=False)  # results stored before references were kept: no examples, no error
    assert examples(old) == [] and "Examples" not in evaluation_html(old) and "Examples" not in evaluation_markdown(old)


def test_gate_and_promotion_read_token_f1_in_metric_points():
    rep = _report()
    merged = MergedReference(key="", task=rep.task["sft"])
    gate = gate_for(ExportConfig(max_accuracy_drop=0.05), merged)
    ref = merged.task.score
    close = ExportFile(format="gguf", qtype="F16", path="m-F16.gguf", score=ref - 0.04, eos_share=1.0)
    far = close.model_copy(update={"qtype": "Q8_0", "score": ref - 0.06})
    ok, why = verdict(close, gate)
    assert ok and f"score {ref - 0.04:.3f} >= {ref - 0.05:.3f} (token_f1)" in why
    bad, why = verdict(far, gate)
    assert not bad and f"(token_f1: merged model {ref:.3f} - export.max_accuracy_drop 0.050 points)" in why
    decision = decide(rep, [], PromoteConfig(min_task_gain=0.5))
    d = rep.task_vs_base["sft"]
    assert decision.promote and decision.reasons[0].startswith(f"task token_f1 0.000 -> {d.mean_candidate:.3f}")
    refused = decide(rep, [], PromoteConfig(min_task_gain=0.95))
    assert not refused.promote and "task token_f1 gain" in refused.reasons[0]
    assert "promote.min_task_gain=0.95 points" in refused.reasons[0]
