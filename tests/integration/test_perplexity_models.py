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


def _padded(tok, texts):
    import torch

    from tuneline.eval.perplexity import encode_texts

    enc = encode_texts(tok, texts)
    ids = torch.zeros(len(enc), max(map(len, enc)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(enc):
        ids[row, : len(e)], mask[row, : len(e)] = torch.tensor(e), 1
    return ids, mask


def _float64_nll(logits, ids, mask):
    import torch.nn.functional as F

    keep = mask[:, 1:].bool()
    per_token = F.cross_entropy(logits[:, :-1][keep].double(), ids[:, 1:][keep], reduction="none")
    return [float(per_token[keep.nonzero()[:, 0] == row].sum()) for row in range(len(ids))]


def test_summed_nll_applies_the_head_in_chunks_and_equals_the_full_logits(tiny_ref, tiny_tok, monkeypatch):
    """summed_nll never makes the rows x tokens x vocabulary logits: the head runs on HEAD_CHUNK real positions at a
    time (pads skipped), and each row's NLL equals float64 cross-entropy on the model's full logits."""
    import torch

    import tuneline.eval.perplexity as ppl
    from tuneline.model.base import load_model

    monkeypatch.setattr(ppl, "HEAD_CHUNK", 5)  # several chunks even on short texts
    model = load_model(tiny_ref).eval()
    ids, mask = _padded(tiny_tok, ["the card I ordered last week never came", "cash back", "where is my money now please"])
    widths = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: widths.append(args[0].shape[:-1]))
    with torch.no_grad():
        got = ppl.summed_nll(model, ids, mask, {})
        chunks = [w[0] for w in widths[2:]]  # after the model's last position and the check of it
        full = model(input_ids=ids, attention_mask=mask).logits
    real = int(mask[:, 1:].sum())
    assert chunks == [5] * (real // 5) + ([real % 5] if real % 5 else [])
    assert torch.allclose(got.double(), torch.tensor(_float64_nll(full, ids, mask), dtype=torch.float64), atol=1e-4)


def test_summed_nll_takes_the_full_logits_where_the_model_changes_its_heads_output(tiny_ref, tiny_tok):
    """A model whose forward does more than the output embedding (Gemma 2's softcapping, a logit scale): the
    last-position check sees it, and the model's own logits are scored."""
    import torch

    from tuneline.eval.perplexity import summed_nll
    from tuneline.model.base import load_model

    model = load_model(tiny_ref).eval()
    forward = model.forward

    def capped(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out

    model.forward = capped
    ids, mask = _padded(tiny_tok, ["the card I ordered last week never came", "cash please"])
    with torch.no_grad():
        got = summed_nll(model, ids, mask, {})
        full = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got.double(), torch.tensor(_float64_nll(full, ids, mask), dtype=torch.float64), atol=1e-4)
