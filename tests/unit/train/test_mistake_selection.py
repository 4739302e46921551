"""DPO mining for generation tasks: which answers become pairs (dpo.min_margin in metric points, the real token
F1 and ROUGE), exact match as before, and the refusal that names the margin.

    .venv/bin/pytest -q tests/unit/train/test_mistake_selection.py
"""

import json

import pytest

from tuneline.config import DPOConfig
from tuneline.eval.scoring import token_f1
from tuneline.train.dpo import select_mistakes, too_few_pairs

GOLD = "the cat sat on the mat near the door"


def _rows(golds):
    return [{"id": f"r{i}", "prompt": json.dumps([{"role": "user", "content": f"q{i}"}]), "assistant": g}
            for i, g in enumerate(golds)]


ANSWERS = [
    GOLD,  # the gold itself: no pair
    "the cat sat on the mat near the door today",  # nearly right (F1 0.92): within the margin, no pair
    "a cat sat on a rug",  # half right (F1 0.5): a clear miss, a pair
    "",  # no answer: a pair under every metric
    "dogs bark loudly",  # nothing right: a pair
]


def test_token_f1_pairs_only_answers_a_margin_below_the_gold():
    rows = _rows([GOLD] * len(ANSWERS))
    pairs, mining = select_mistakes(rows, ANSWERS, "token_f1", min_margin=0.2)
    gaps = [1 - token_f1(a, GOLD) for a in ANSWERS]
    assert [p.origin for p in pairs] == [f"r{i}" for i, g in enumerate(gaps) if g >= 0.2] == ["r2", "r3", "r4"]
    assert 0 < gaps[1] < 0.2 and mining.near == 1 and mining.mistakes == 3 and mining.rows == 5
    assert all(p.chosen == GOLD and p.rejected == ANSWERS[int(p.origin[1:])] for p in pairs)
    assert pairs[0].prompt == [{"role": "user", "content": "q2"}]
    strict, _ = select_mistakes(rows, ANSWERS, "token_f1", min_margin=0.6)  # half right is no longer a miss
    assert [p.origin for p in strict] == ["r3", "r4"]


def test_rouge_pairs_by_its_own_scores_and_a_gold_it_cannot_score_gives_none():
    rows = _rows([GOLD, GOLD, "!!! ???"])
    pairs, mining = select_mistakes(rows, ["the cat sat on the mat", "dogs bark", "anything"], "rougeL", 0.2)
    # rougeL of the first answer vs gold: 6 of 9 gold tokens in order -> F 0.8, a gap of exactly the margin (it
    # holds, float rounding or not); a gold with no [a-z0-9] token scores 0 even against itself, so nothing can
    # score below it: no pair.
    assert [p.origin for p in pairs] == ["r0", "r1"] and mining.metric == "rougeL"


def test_exact_match_keeps_every_wrong_answer_whatever_the_margin():
    rows = _rows(["card_arrival", "lost_card", "top_up_failed"])
    answers = ["Card_arrival.", "lost_card_found", ""]
    for margin in (0.0, 0.2, 1.0):
        pairs, _ = select_mistakes(rows, answers, "exact_match", margin)
        assert [p.origin for p in pairs] == ["r1", "r2"]


def test_too_few_pairs_names_the_margin_for_a_generation_metric():
    _, mining = select_mistakes(_rows([GOLD] * 2), [GOLD, ANSWERS[1]], "token_f1", 0.2)
    text = too_few_pairs(DPOConfig(), 0, 2, 0, mining)
    assert "0 of the SFT model's 2 answers" in text and "dpo.min_margin=0.2 below the gold answer on token_f1" in text
    assert "1 more scored below it by less" in text and "lower dpo.min_margin" in text
    assert "raise data.mining_rows" in text and text.endswith("Or set dpo.enabled: false.")


@pytest.mark.parametrize("margin", [-0.1, 1.5])
def test_the_margin_is_in_metric_points(margin):
    with pytest.raises(ValueError):
        DPOConfig(min_margin=margin)
