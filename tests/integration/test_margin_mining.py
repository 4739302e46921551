"""DPO mining on the tiny random model with token F1: the real generation, the real metric and dpo.min_margin
wired together (which answers pass the margin is tested on constructed answers in
tests/unit/train/test_mistake_selection.py; the random model only says newlines).

    .venv/bin/pytest -q tests/integration/test_margin_mining.py
"""

import json

from tuneline.data.records import messages
from tuneline.eval.task import generate
from tuneline.model.base import load_model
from tuneline.train.dpo import mine_pairs

TOKENS = 6


def test_mining_pairs_the_answers_a_margin_below_the_gold(tiny_ref, tiny_tok):
    model = load_model(tiny_ref).eval()
    rows = [{"id": f"r{i}", "prompt": json.dumps([{"role": "user", "content": q}]), "assistant": ""}
            for i, q in enumerate(["Name a fruit.", "Say hello."])]
    said = generate(model, tiny_tok, [messages(r, with_answer=False) for r in rows], TOKENS, batch_size=2)
    rows[0]["assistant"] = said[0].strip()  # the model's own answer as the gold: no gap, no pair
    rows[1]["assistant"] = "an unrelated gold answer about bananas"  # nothing in common: gap 1, a pair
    pairs, mining = mine_pairs(model, tiny_tok, rows, TOKENS, 2, metric="token_f1", min_margin=0.2)
    assert [p.origin for p in pairs] == ["r1"] and mining.rows == 2 and mining.mean_gap == 0.5
    assert pairs[0].rejected == said[1].strip() and pairs[0].chosen == rows[1]["assistant"]
    assert pairs[0].prompt == [{"role": "user", "content": "Say hello."}]
    strict, mining = mine_pairs(model, tiny_tok, rows, TOKENS, 2, metric="token_f1", min_margin=1.0)
    assert [p.origin for p in strict] == ["r1"] and mining.min_margin == 1.0  # a gap of 1 holds any margin
