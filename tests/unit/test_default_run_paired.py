"""bench/default_run.py --paired: two runs' final candidates compared item by item, matched by id.

    .venv/bin/pytest -q tests/unit/test_default_run_paired.py
"""

from __future__ import annotations


def test_paired_matches_items_by_id_and_reports_the_difference(capsys, bench_module):
    # Run A gets rows r0..r9 right except r9; run B gets r0..r4 only. Listed in another order in B: the ids pair them.
    a = {"run": "aaaaaaaa-1", "final_items": {"task": {f"r{i}": float(i < 9) for i in range(10)},
                                              "mmlu": {"q1": 1.0}}}
    b = {"run": "bbbbbbbb-2", "final_items": {"task": {f"r{i}": float(i < 5) for i in reversed(range(10))},
                                              "nll": {"0": 2.0}}}
    bench_module("default_run").paired(a, b)
    out = capsys.readouterr().out
    task = next(line for line in out.splitlines() if line.strip().startswith("task"))
    assert "n=10" in task and "0.9000 vs 0.5000: +0.4000" in task, out
    assert "mmlu   no common items" in out and "nll" not in out.split("\n", 1)[1], out
