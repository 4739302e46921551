"""Multi-task scoring, report and promotion: each row scored with its task's metric and length, the report's
per-task table, and a task that got significantly worse blocking promotion by name.

    .venv/bin/pytest -q tests/unit/eval/test_per_task_gate.py
"""

import json

import numpy as np
import pytest

from tuneline.config import PromoteConfig
from tuneline.dashboard import evaluation_html, evaluation_markdown, run_summary
from tuneline.eval.report import EvalReport
from tuneline.eval.scoring import MIXED, exact_match, score_items, token_f1
from tuneline.eval.stats import paired_bootstrap
from tuneline.eval.task import TaskResult, TaskScore, score_task
from tuneline.export.gate import probe_metric
from tuneline.promote import decide
from tuneline.train.dpo import select_mistakes


def _row(i: int, task: str | None, metric: str = "exact_match", length: int = 3, gold: str = "card arrival") -> dict:
    row = {"id": f"{task or 'x'}:f.csv:{i}", "prompt": json.dumps([{"role": "user", "content": f"question {i}"}]),
           "assistant": gold, "shape": "alpaca"}
    return row | ({"task": task, "metric": metric, "max_new_tokens": length} if task else {})


ROWS = [_row(0, "intent"), _row(1, "gen", "token_f1", 5, "the card arrival is late"), _row(2, "intent"),
        _row(3, "gen", "token_f1", 5, "card arrival")]


def test_rows_are_scored_with_their_tasks_metric_and_length(tiny_ref, tiny_tok):
    from tuneline.model.base import load_model

    model = load_model(tiny_ref).eval()
    res = score_task(model, tiny_tok, ROWS, max_new_tokens=2, batch_size=4, metric="exact_match")
    assert res.metric == MIXED and res.item_tasks == ["intent", "gen", "intent", "gen"]
    assert [(t.name, t.metric, t.n, t.max_new_tokens) for t in res.tasks] == \
        [("intent", "exact_match", 2, 3), ("gen", "token_f1", 2, 5)]
    want = [exact_match(res.predictions[0], ROWS[0]["assistant"]), token_f1(res.predictions[1], ROWS[1]["assistant"]),
            exact_match(res.predictions[2], ROWS[2]["assistant"]), token_f1(res.predictions[3], ROWS[3]["assistant"])]
    assert res.per_item == want and res.score == pytest.approx(np.mean(want))
    lengths = [len(tiny_tok(p, add_special_tokens=False)["input_ids"]) for p in res.predictions]
    assert max(lengths[0], lengths[2]) <= 3 + 1 and max(lengths[1], lengths[3]) <= 5 + 1  # each task's own length
    plain = score_task(model, tiny_tok, [_row(0, None)], max_new_tokens=2, batch_size=4, metric="token_f1")
    assert plain.metric == "token_f1" and plain.tasks == [] and plain.item_tasks == []  # one task: as before


def test_mining_and_the_export_probe_use_each_rows_metric():
    preds = ["card arrival late", "the card arrival is late now", "card arrivals", "card arrival"]
    pairs, mining = select_mistakes(ROWS, preds, "exact_match", min_margin=0.3)
    # intent rows: any wrong label is a mistake; gen rows: only answers 0.3 token-F1 below the gold's
    assert [p.origin for p in pairs] == ["intent:f.csv:0", "intent:f.csv:2"] and mining.metric == MIXED
    assert probe_metric(ROWS, "exact_match") == ["exact_match", "token_f1", "exact_match", "token_f1"]
    assert probe_metric([_row(0, None)], "rougeL") == "rougeL"
    assert score_items(preds, [r["assistant"] for r in ROWS], probe_metric(ROWS, "exact_match"))[1] == \
        token_f1(preds[1], ROWS[1]["assistant"])


N = 30  # rows per task


def _result(intent_right: int, gen_f1: float) -> TaskResult:
    intent = [1.0] * intent_right + [0.0] * (N - intent_right)
    gen = [gen_f1 + 0.01 * (i % 3) for i in range(N)]
    per_item = intent + gen
    return TaskResult(score=float(np.mean(per_item)), n=2 * N, per_item=per_item, seconds=0, metric=MIXED,
                      item_ids=[f"intent:{i}" for i in range(N)] + [f"gen:{i}" for i in range(N)],
                      predictions=[""] * 2 * N, item_tasks=["intent"] * N + ["gen"] * N,
                      tasks=[TaskScore(name="intent", metric="exact_match", n=N, score=float(np.mean(intent))),
                             TaskScore(name="gen", metric="token_f1", n=N, score=float(np.mean(gen)))])


def _report(final: TaskResult) -> EvalReport:
    base = _result(5, 0.30)
    return EvalReport(task={"base": base, "sft": final}, benchmarks={}, benchmarks_vs_base={}, final="sft",
                      seconds=1, task_vs_base={"sft": paired_bootstrap(final.per_item, base.per_item, resamples=500)})


def test_a_task_that_got_worse_blocks_promotion_by_name():
    worse = _report(_result(29, 0.20))  # intent +80 points, gen -10 token-F1 points: the mean still rises
    decision = decide(worse, [], PromoteConfig(min_task_gain=0.05))
    assert worse.task_vs_base["sft"].ci_low > 0 and not decision.promote
    said = [r for r in decision.reasons if r.startswith("task 'gen' token_f1")]
    assert said and "significantly worse" in said[0] and "data.tasks" in said[0], decision.reasons
    assert any(r.startswith("task 'intent' exact_match 0.167 -> 0.967") and "no significant drop" in r
               for r in decision.reasons)
    better = decide(_report(_result(29, 0.35)), [], PromoteConfig(min_task_gain=0.05))
    assert better.promote and not any("significantly worse" in r for r in better.reasons), better.reasons


def test_the_report_shows_the_per_task_table():
    rep = _report(_result(29, 0.20))
    page, md = evaluation_html(rep, "x"), evaluation_markdown(rep)
    assert "<h3>Per task (each on its own rows and metric" in page
    assert "<td>gen</td><td>token_f1</td><td>30</td><td>31.0%</td><td>21.0% (-10.0% [" in page
    assert "| task | metric | n | base | sft (vs base, 95% CI) |" in md
    assert "| intent | exact_match | 30 | 16.7% | 96.7% (+80.0% [" in md
    summary = run_summary(rep, [], "not promoted", None)
    assert "task gen (token_f1, 30 rows): base 31.0%; sft 21.0% (-10.0% [" in summary
    single = rep.model_copy(update={"task": {k: v.model_copy(update={"tasks": [], "item_tasks": []})
                                             for k, v in rep.task.items()}})
    assert single.per_task() == [] and "Per task" not in evaluation_html(single)
