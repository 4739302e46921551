import json
import math

import pytest

from tuneline.config import EvaluateConfig, PerplexityConfig
from tuneline.data.readers import DataError
from tuneline.eval.perplexity import general_texts, perplexity_result, read_general_texts


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_read_general_texts_keeps_the_last_long_enough_rows(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", ["one two three", "too short", "four five six", "seven eight nine"])
    assert read_general_texts(path, "text", rows=2, min_words=3) == ["four five six", "seven eight nine"]


def test_read_general_texts_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="file not found; set evaluate.perplexity.file"):
        read_general_texts(tmp_path / "missing.jsonl", "text", 2, 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine words here"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_general_texts(bad, "text", 2, 1)
    with pytest.raises(DataError, match="fewer than 2 'text' texts with 5\\+ words"):
        read_general_texts(_jsonl(tmp_path / "short.jsonl", ["a b", "c d"]), "text", 2, 5)


def test_general_texts_off_is_empty_and_on_reads_the_file(tmp_path):
    assert general_texts(EvaluateConfig(perplexity=None)) == []
    path = _jsonl(tmp_path / "g.jsonl", ["alpha beta gamma", "delta epsilon zeta"])
    cfg = EvaluateConfig(perplexity=PerplexityConfig(file=str(path), field="text", rows=5, min_words=2))
    assert general_texts(cfg) == ["alpha beta gamma", "delta epsilon zeta"]


def test_perplexity_is_token_weighted():
    res = perplexity_result([2.0, 6.0], [1, 3], start=0.0)
    assert res.per_item == [2.0, 2.0] and res.n_tokens == 4
    assert res.ppl == pytest.approx(math.exp(8.0 / 4))


def test_picked_logprobs_match_a_float64_log_softmax():
    """The GGUF paths' fast log-softmax (torch logsumexp in float32) against numpy in float64, on logits as
    wide and as spread as a 49k vocabulary's; a wrong row, id or sign would be off by whole nats."""
    import numpy as np

    from tuneline.eval.gguf_lm import picked_logprobs

    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((40, 49152)) * 4).astype(np.float32)
    ids = rng.integers(0, 49152, 40).tolist()
    wide = rows.astype(np.float64)
    want = wide[np.arange(40), ids] - np.logaddexp.reduce(wide, axis=1)
    got = picked_logprobs(rows, ids)
    assert got.dtype == np.float64 and got.shape == (40,)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(picked_logprobs(rows, ids[::-1]) - want).max() > 1  # the ids pick their own row's column
