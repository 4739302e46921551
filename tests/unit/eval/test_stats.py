import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

from tuneline.eval.stats import paired_bootstrap

N = 300


def _base(seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random(N) < 0.6).astype(float)


def _flip(x: np.ndarray, frm: float, share: float, seed: int) -> np.ndarray:
    """Turn `share` of the items scored `frm` into 1 - frm."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    hits = np.flatnonzero(x == frm)
    out[rng.choice(hits, int(share * len(hits)), replace=False)] = 1 - frm
    return out


def test_large_drop_gives_ci_below_zero():
    base = _base()
    cand = _flip(base, 1.0, 0.4, seed=2)  # loses 40 % of its correct answers
    d = paired_bootstrap(cand.tolist(), base.tolist())
    assert d.diff < -0.2
    assert d.ci_low < d.diff < d.ci_high < 0
    assert d.p_value == pytest.approx(1 / 2000)
    assert d.n == N


def test_significant_gain_gives_ci_above_zero():
    base = _base()
    cand = _flip(base, 0.0, 0.5, seed=3)
    d = paired_bootstrap(cand.tolist(), base.tolist())
    assert 0 < d.ci_low < d.diff < d.ci_high
    assert d.p_value < 0.01


def test_pure_noise_gives_ci_containing_zero():
    rng = np.random.default_rng(4)
    a, b = _base(5), _base(6)
    # Each item's pair is swapped at random: the two lists come from the same distribution.
    swap = rng.random(N) < 0.5
    cand, base = np.where(swap, a, b), np.where(swap, b, a)
    d = paired_bootstrap(cand.tolist(), base.tolist())
    assert d.ci_low < 0 < d.ci_high
    assert d.p_value > 0.05


def test_identical_lists_have_zero_diff_and_p_one():
    base = _base().tolist()
    d = paired_bootstrap(base, base)
    assert d.diff == d.ci_low == d.ci_high == 0
    assert d.p_value == 1.0


def test_deterministic_for_a_seed():
    base = _base()
    cand = _flip(base, 1.0, 0.1, seed=7)
    first = paired_bootstrap(cand.tolist(), base.tolist(), seed=11)
    assert paired_bootstrap(cand.tolist(), base.tolist(), seed=11) == first
    assert paired_bootstrap(cand.tolist(), base.tolist(), seed=12) != first


def test_chunked_resampling_matches_shape(monkeypatch):
    import tuneline.eval.stats as stats

    monkeypatch.setattr(stats, "_MAX_CELLS", N * 7)  # forces 7-resample chunks
    d = paired_bootstrap(_flip(_base(), 1.0, 0.4, seed=2).tolist(), _base().tolist(), resamples=100)
    assert d.ci_high < 0 and d.resamples == 100


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="no items"):
        paired_bootstrap([], [])
