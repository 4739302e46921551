"""The promotion gate on constructed reports: a real gain passes, a real drop fails, noise passes."""

import numpy as np

from tuneline.config import PromoteConfig
from tuneline.evaluate import EvalReport
from tuneline.generate import TaskResult
from tuneline.promote import decide
from tuneline.stats import paired_bootstrap

EXPORTS = [{"qtype": "F16", "passed": True, "reason": "ok"}]


def _task(scores):
    return TaskResult(accuracy=float(np.mean(scores)), n=len(scores), per_item=list(map(float, scores)),
                      item_ids=[str(i) for i in range(len(scores))], predictions=[""] * len(scores), seconds=0)


def _report(base_task, final_task, base_bench, final_bench) -> EvalReport:
    return EvalReport(
        task={"base": _task(base_task), "sft": _task(final_task)},
        task_vs_base={"sft": paired_bootstrap(final_task, base_task)},
        benchmarks={}, benchmarks_vs_base={"mmlu": paired_bootstrap(final_bench, base_bench)},
        final="sft", seconds=0,
    )


rng = np.random.default_rng(0)
N = 200
BASE = rng.integers(0, 2, N).astype(float)


def test_significant_gain_without_forgetting_promotes():
    d = decide(_report(np.zeros(N), np.r_[np.ones(150), np.zeros(50)], BASE, BASE), EXPORTS, PromoteConfig())
    assert d.promote and d.stage == "staging"


def test_no_gain_is_not_promoted_and_says_why():
    d = decide(_report(np.zeros(N), np.zeros(N), BASE, BASE), EXPORTS, PromoteConfig())
    assert not d.promote and "min_task_gain" in d.sentence()


def test_large_benchmark_drop_blocks_promotion():
    forgot = BASE * (rng.random(N) < 0.3)  # most right answers become wrong
    d = decide(_report(np.zeros(N), np.ones(N), BASE, forgot), EXPORTS, PromoteConfig())
    assert not d.promote and "forgot" in d.sentence()


def test_benchmark_noise_does_not_block():
    flipped = BASE.copy()
    idx = rng.choice(N, 6, replace=False)
    flipped[idx] = 1 - flipped[idx]  # a few flips both ways: noise
    d = decide(_report(np.zeros(N), np.ones(N), BASE, flipped), EXPORTS, PromoteConfig())
    assert d.promote


def test_no_passing_export_blocks_promotion():
    d = decide(_report(np.zeros(N), np.ones(N), BASE, BASE), [{"qtype": "Q4_K_M", "passed": False, "reason": "gibberish"}],
               PromoteConfig())
    assert not d.promote and "Q4_K_M: gibberish" in d.sentence()


def test_significant_perplexity_rise_blocks_promotion():
    base_nll = rng.normal(2.0, 0.3, N)
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE)
    rep.nll_vs_base = paired_bootstrap(base_nll + 0.5, base_nll)  # exp(0.5) - 1 = +65 %
    d = decide(rep, EXPORTS, PromoteConfig())
    assert not d.promote and "perplexity rose" in d.sentence()
    rep.nll_vs_base = paired_bootstrap(base_nll + rng.normal(0, 0.05, N), base_nll)  # noise
    assert decide(rep, EXPORTS, PromoteConfig()).promote


def test_worse_than_the_current_version_is_not_promoted():
    current = _report(np.zeros(N), np.ones(N), BASE, BASE)
    worse = _report(np.zeros(N), np.r_[np.ones(120), np.zeros(80)], BASE, BASE)
    d = decide(worse, EXPORTS, PromoteConfig(), current=current)
    assert not d.promote and "significantly worse than the version it would replace" in d.sentence()
    assert decide(worse, EXPORTS, PromoteConfig(compare_to_current=False), current=current).promote
    assert decide(current, EXPORTS, PromoteConfig(), current=worse).promote
