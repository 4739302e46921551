"""Task metrics: label normalization, SQuAD token F1, ROUGE through the local evaluate script.

    .venv/bin/pytest -q tests/unit/eval/test_scoring.py     # seconds; no model, no hub
"""

import os

# Before any import that could read them (huggingface_hub reads HF_HUB_OFFLINE at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import socket  # noqa: E402

import pytest  # noqa: E402

from tuneline.eval import scoring  # noqa: E402
from tuneline.eval import task as gen  # noqa: E402
from tuneline.eval.metrics import ROUGE_SCRIPT  # noqa: E402
from tuneline.eval.scoring import (  # noqa: E402
    METRICS,
    exact_match,
    normalize_answer,
    normalize_label,
    score_items,
    token_f1,
)

REF = "the cat sat on the mat"


# ---------------------------------------------------------------- exact match / labels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card_arrival", "card_arrival"),
        ("  Card_Arrival.  ", "card_arrival"),
        ("card_arrival...", "card_arrival"),
        ("card_arrival\nbecause the card has not come", "card_arrival"),
        ("\n\n  card_arrival \n", "card_arrival"),  # leading blank lines are not the first line
        ("lost  or\tstolen   card", "lost or stolen card"),
        ("", ""),
        ("   \n  ", ""),
        ("...", ""),
        ("v1.2", "v1.2"),  # only trailing full stops go
    ],
)
def test_normalize_label(text, expected):
    assert normalize_label(text) == expected


def test_exact_match():
    assert exact_match("Card_arrival.\nmore text", "card_arrival") == 1.0
    assert exact_match("card arrival", "card_arrival") == 0.0
    assert exact_match("", "") == 1.0


# ---------------------------------------------------------------- token F1


def test_normalize_answer_is_squad():
    assert normalize_answer("The  Cat, sat on a MAT!") == "cat sat on mat"
    assert normalize_answer("an apple; theory") == "apple theory"  # articles only as whole words


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("The cat sat.", "the cat sat", 1.0),  # identical after normalization
        ("dog runs", "cat sat", 0.0),  # disjoint
        ("the cat sat", REF, 2 / 3),  # [cat sat] vs [cat sat on mat]: P=1, R=1/2
        ("New York, New York!", "new york city", 4 / 7),  # counts clip: common=2, P=2/4, R=2/3
        ("the", "a", 1.0),  # both empty after article removal
        ("", "cat", 0.0),
        ("cat", "", 0.0),
    ],
)
def test_token_f1(pred, ref, expected):
    assert token_f1(pred, ref) == pytest.approx(expected)


# ---------------------------------------------------------------- ROUGE (evaluate, local script)


@pytest.mark.parametrize(
    ("metric", "pred", "expected"),
    [
        # Unigrams: 3 of 3 predicted match, 3 of 6 reference: F = 2*1*0.5/1.5.
        ("rouge1", "the cat sat", 2 / 3),
        # Bigrams: 2 of 2 predicted, 2 of 5 reference: F = 2*0.4/1.4.
        ("rouge2", "the cat sat", 4 / 7),
        ("rougeL", "the cat sat", 2 / 3),
        # Same words, different order: all unigrams, 4 of 5 bigrams, LCS "the sat on the" = 4 of 6.
        ("rouge1", "the mat sat on the cat", 1.0),
        ("rouge2", "the mat sat on the cat", 0.8),
        ("rougeL", "the mat sat on the cat", 2 / 3),
        ("rouge1", "The CAT sat!", 2 / 3),  # case and punctuation do not matter
        ("rouge1", "dogs bark", 0.0),
        ("rouge1", "", 0.0),
    ],
)
def test_rouge_known_values(metric, pred, expected):
    assert score_items([pred], [REF], metric) == [pytest.approx(expected)]


def test_rouge_matches_rouge_score_directly():
    from rouge_score import rouge_scorer

    preds = ["the cat sat", "a mat", "on the mat the cat sat", "nothing here"]
    refs = [REF, REF, "the cat sat on the mat", "nothing is here"]
    scorer = rouge_scorer.RougeScorer(list(scoring.ROUGE_METRICS))
    for metric in scoring.ROUGE_METRICS:
        direct = [scorer.score(r, p)[metric].fmeasure for p, r in zip(preds, refs)]
        assert score_items(preds, refs, metric) == pytest.approx(direct)


def test_rouge_is_one_batched_compute(monkeypatch):
    metric = scoring._rouge()
    calls = []
    real = metric.compute

    def counting(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(metric, "compute", counting)
    assert len(score_items(["a b"] * 50, ["a b c"] * 50, "rougeL")) == 50
    assert len(calls) == 1 and calls[0]["use_aggregator"] is False


# ---------------------------------------------------------------- score_items


@pytest.mark.parametrize("metric", METRICS)
def test_score_items_length_order_and_range(metric):
    preds = ["the cat sat on the mat", "dogs bark loudly", "the cat", ""]
    refs = [REF, REF, REF, REF]
    scores = score_items(preds, refs, metric)
    assert len(scores) == len(preds) and all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores[0] == 1.0 and scores[1] == 0.0 and scores[3] == 0.0
    # Reordering the pairs reorders the scores the same way.
    assert score_items(preds[::-1], refs[::-1], metric) == scores[::-1]
    assert score_items([], [], metric) == []


def test_score_items_unknown_metric_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        score_items(["a"], ["a"], "bleu")
    assert "'bleu'" in str(err.value) and all(m in str(err.value) for m in METRICS)


def test_score_items_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_items(["a", "b"], ["a"], "token_f1")


def test_rouge_loads_from_the_repo_with_no_network(monkeypatch):
    """evaluate.load gets an absolute path to the shipped script; any socket connect would fail."""
    assert ROUGE_SCRIPT.is_absolute() and ROUGE_SCRIPT.is_file()

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access during scoring: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    scoring._rouge.cache_clear()
    try:
        assert score_items(["the cat sat"], [REF], "rouge1") == [pytest.approx(2 / 3)]
    finally:
        scoring._rouge.cache_clear()


# ---------------------------------------------------------------- score_task


def test_score_task_uses_the_metric(monkeypatch):
    records = [{"id": f"r{i}", "prompt": '[{"role": "user", "content": "q"}]', "assistant": a}
               for i, a in enumerate(["card_arrival", "the cat sat on the mat"])]
    monkeypatch.setattr(gen, "generate", lambda *a, **k: ["Card_arrival.", "the cat sat"])
    default = gen.score_task(None, None, records, max_new_tokens=4, batch_size=2)
    assert (default.metric, default.per_item, default.score) == ("exact_match", [1.0, 0.0], 0.5)
    f1 = gen.score_task(None, None, records, max_new_tokens=4, batch_size=2, metric="token_f1")
    assert f1.metric == "token_f1" and f1.per_item == pytest.approx([1.0, 2 / 3])
    assert f1.score == pytest.approx((1 + 2 / 3) / 2) and f1.item_ids == ["r0", "r1"]
    with pytest.raises(ValueError, match="unknown task metric"):
        gen.score_task(None, None, records, max_new_tokens=4, batch_size=2, metric="acc")
    # Results stored before the metric field existed still load.
    assert gen.TaskResult(score=1, n=0, per_item=[], item_ids=[], predictions=[], seconds=0).metric == "exact_match"
