import math

import pytest

from tuneline.eval.perplexity import perplexity


def test_perplexity_batched_matches_unbatched(tiny_ref, tiny_tok):
    from tuneline.model.base import load_model

    model, tok = load_model(tiny_ref), tiny_tok
    texts = ["Hello world, this is a test.", "A longer text, so that the batch needs some padding here.", "Hi there"]
    one, three = perplexity(model, tok, texts, batch_size=1), perplexity(model, tok, texts, batch_size=3)
    assert one.per_item == pytest.approx(three.per_item, abs=1e-4)
    n_scored = [len(tok(t, add_special_tokens=False)["input_ids"]) - 1 for t in texts]
    assert one.n_tokens == sum(n_scored)
    weighted = sum(nll * n for nll, n in zip(one.per_item, n_scored)) / sum(n_scored)
    assert one.ppl == pytest.approx(math.exp(weighted))
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        perplexity(model, tok, ["Hi"])
