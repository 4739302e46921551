"""Long waits show progress in the step log: GGUF scoring and perplexity write a tqdm bar to stderr."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from tuneline.eval.gguf_lm import GGUFLM  # noqa: E402
from tuneline.eval.perplexity import encode_texts, gguf_perplexity, perplexity  # noqa: E402
from tuneline.export import gguf  # noqa: E402

TEXTS = ["The bank sent me a new card after I reported the old one lost.",
         "Top up by bank transfer takes up to two working days to arrive."]
# count, elapsed<ETA, rate (tqdm writes s/unit below one unit per second)
BAR = r"{}: 100%\|[^|]*\| {n}/{n} \[[\d:]+<[\d:]+, *[\d.]+ ?(?:{unit}/s|s/{unit})\]"


@pytest.fixture(scope="module")
def f16(tiny_ref, tmp_path_factory) -> Path:
    return gguf.convert(tiny_ref.path, tmp_path_factory.mktemp("progress") / "tiny-F16.gguf", "f16")


def test_gguf_scoring_reports_progress_unless_disabled(f16, capfd):
    lm = GGUFLM(f16)
    try:
        reqs = [SimpleNamespace(args=("Intent: lost card. Answer:", f" {a}")) for a in ("yes", "no", "maybe")]
        capfd.readouterr()
        assert len(lm.loglikelihood(reqs)) == 3
        err = capfd.readouterr().err
        assert re.search(BAR.format("loglikelihood tiny-F16.gguf", n=3, unit="req"), err), err
        lm.loglikelihood(reqs, disable_tqdm=True)  # lm-eval asks for silence on non-zero ranks
        assert "loglikelihood" not in capfd.readouterr().err
    finally:
        lm.close()


def test_perplexity_reports_progress(f16, tiny_ref, tiny_tok, capfd):
    from tuneline.model.base import load_model

    capfd.readouterr()
    hf = perplexity(load_model(tiny_ref), tiny_tok, TEXTS, batch_size=1)
    ggml = gguf_perplexity(f16, encode_texts(tiny_tok, TEXTS))
    err = capfd.readouterr().err
    assert re.search(BAR.format("perplexity", n=2, unit="batch"), err), err
    assert re.search(BAR.format("perplexity tiny-F16.gguf", n=2, unit="text"), err), err
    assert hf.ppl == pytest.approx(ggml.ppl, rel=0.01)  # the bar changed nothing in what is scored
