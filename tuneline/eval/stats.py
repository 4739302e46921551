"""Paired bootstrap for comparing two models scored on the same items (numpy only, no models).

    from tuneline.eval.stats import paired_bootstrap
    d = paired_bootstrap(final.per_item, base.per_item)   # BenchmarkResult.per_item lists, same item order
    d.diff, d.ci_low, d.ci_high, d.p_value

Pairing matters: both models answered the same questions, so resampling items (not each model's
scores separately) cancels per-question difficulty and gives a much tighter interval.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

# Resampled index matrices above this many cells are built in chunks to bound memory.
_MAX_CELLS = 20_000_000


class PairedDiff(BaseModel):
    mean_candidate: float
    mean_base: float
    diff: float  # mean_candidate - mean_base
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float  # two-sided, for diff == 0
    n: int
    resamples: int


def _bootstrap_means(d: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of d over `resamples` item resamples (with replacement), vectorized in chunks."""
    n = len(d)
    chunk = max(1, _MAX_CELLS // n)
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = d[idx].mean(axis=1)
    return out


def paired_bootstrap(
    candidate: list[float],
    base: list[float],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDiff:
    """Percentile CI and two-sided p-value for mean(candidate) - mean(base) over paired items."""
    c, b = np.asarray(candidate, dtype=float), np.asarray(base, dtype=float)
    if c.ndim != 1 or c.shape != b.shape:
        raise ValueError(f"candidate and base must be flat lists of the same length (got {c.shape} and {b.shape})")
    if len(c) == 0:
        raise ValueError("no items to compare")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1 (got {resamples}, {confidence})")
    d = c - b
    diff = float(d.mean())
    boot = _bootstrap_means(d, resamples, np.random.default_rng(seed))
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    # Share of resampled diffs on the other side of 0 from the observed one (ties count), doubled;
    # never reported below 1/resamples, the resolution of the bootstrap.
    other_side = np.mean(boot <= 0) if diff > 0 else np.mean(boot >= 0) if diff < 0 else 1.0
    p = min(1.0, max(2 * float(other_side), 1 / resamples))
    return PairedDiff(
        mean_candidate=float(c.mean()),
        mean_base=float(b.mean()),
        diff=diff,
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        p_value=p,
        n=len(d),
        resamples=resamples,
    )
