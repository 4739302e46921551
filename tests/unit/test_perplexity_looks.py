"""The export gate's perplexity check stops early only when a file is surely over its limit.

    .venv/bin/python -m pytest tests/unit/test_perplexity_looks.py -q
"""

import math

import numpy as np
import pytest

from tuneline.export.gate import LOOK, Gate, judge_perplexity, verdict
from tuneline.export.records import ExportFile
from tuneline.promote import _export_perplexity

N = 100


def _texts(seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = [int(t) for t in rng.integers(20, 300, N)]
    reference = [float(x) for x in rng.normal(3.2, 0.4, N)]
    return tokens, reference


def _gate(reference: list[float], tokens: list[int]) -> Gate:
    ppl = math.exp(sum(r * t for r, t in zip(reference, tokens)) / sum(tokens))
    return Gate(reference_accuracy=0.75, max_accuracy_drop=0.02, min_eos_share=0.0, reference_ppl=ppl,
                reference_nll=reference, max_ppl_increase={"F16": 0.005, "*": 0.05})


def _judge(qtype: str, nll: list[float], tokens: list[int], gate: Gate) -> tuple[ExportFile, list[tuple[int, int]]]:
    calls = []

    def score(start: int, end: int) -> list[float]:
        calls.append((start, end))
        return nll[start:end]

    entry = ExportFile(format="gguf", qtype=qtype, path="model.gguf")
    judge_perplexity(entry, score, tokens, gate)
    return entry, calls


def test_a_file_far_over_its_limit_stops_after_the_first_look():
    tokens, reference = _texts()
    rng = np.random.default_rng(1)
    broken = [r + math.log(1.4) + float(rng.normal(0, 0.05)) for r in reference]  # ~+40 % on every text
    entry, calls = _judge("Q5_K_M", broken, tokens, _gate(reference, tokens))
    assert calls == [(0, LOOK)] and len(entry.nll_per_item) == LOOK
    assert entry.perplexity_bound is not None and 0.05 < entry.perplexity_bound < entry.perplexity_increase
    assert entry.perplexity_increase == pytest.approx(0.4, abs=0.03)  # against the merged model on the same texts
    passed, reason = verdict(entry, _gate(reference, tokens))
    assert not passed
    assert f"perplexity on the first {LOOK} of {N} texts" in reason
    assert f"the other {N - LOOK} texts were not scored" in reason


def test_a_file_at_its_limit_is_scored_on_every_text_to_the_full_number():
    tokens, reference = _texts(2)
    rng = np.random.default_rng(3)
    close = [r + math.log(1.05) + float(rng.normal(0, 0.2)) for r in reference]  # noisy, right at the limit
    gate = _gate(reference, tokens)
    entry, calls = _judge("Q6_K", close, tokens, gate)
    assert len(calls) == N // LOOK and len(entry.nll_per_item) == N and entry.perplexity_bound is None
    full = math.exp(sum(x * t for x, t in zip(close, tokens)) / sum(tokens))
    assert entry.perplexity == pytest.approx(full) and entry.perplexity_reference == pytest.approx(gate.reference_ppl)
    assert entry.perplexity_increase == pytest.approx(full / gate.reference_ppl - 1)
    assert "texts were not scored" not in verdict(entry, gate)[1]


def test_a_lossless_file_is_scored_on_every_text_even_under_the_tight_limit():
    tokens, reference = _texts(4)
    same = [r + 1e-4 for r in reference]
    entry, calls = _judge("F16", same, tokens, _gate(reference, tokens))
    assert len(entry.nll_per_item) == N and entry.perplexity_bound is None and entry.perplexity_increase < 0.001


def test_without_the_merged_models_per_text_nll_every_text_is_scored_at_once():
    tokens, reference = _texts(5)
    gate = _gate(reference, tokens).model_copy(update={"reference_nll": []})
    broken = [r + 1.0 for r in reference]
    entry, calls = _judge("Q4_0", broken, tokens, gate)
    assert calls == [(0, N)] and entry.perplexity_bound is None
    assert entry.perplexity_reference == gate.reference_ppl and entry.perplexity_increase > 1.5


def test_an_early_stopped_file_is_left_out_of_the_perplexity_pairing():
    from types import SimpleNamespace

    from tuneline.eval.perplexity import PerplexityResult

    tokens, reference = _texts(6)
    base = PerplexityResult(ppl=20.0, per_item=[r - 0.1 for r in reference])
    stopped, _ = _judge("Q5_K_M", [r + 1.0 for r in reference], tokens, _gate(reference, tokens))
    full, _ = _judge("Q6_K", [r + 0.01 for r in reference], tokens, _gate(reference, tokens))
    assert stopped.perplexity_bound is not None and full.perplexity_bound is None
    report = SimpleNamespace(perplexity={"base": base}, nll_changes={})  # the two fields it reads
    ppl, nll = _export_perplexity(report, [stopped, full], None, 200, 0)
    assert "gguf-Q6_K" in ppl and "gguf-Q6_K" in nll and "gguf-Q5_K_M" not in ppl
