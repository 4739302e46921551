"""Continued pretraining on the tiny model: packed documents with loss on every token, held-out perplexity as
the task metric per candidate (lower is better for the promotion and the export gate), a GGUF export judged on it.

    .venv/bin/pytest -q tests/integration/test_continued_pretraining.py
"""

import random

import pytest

from tuneline.config import EvaluateConfig, ExportConfig, PromoteConfig, SFTConfig
from tuneline.dashboard import evaluation_markdown, run_summary
from tuneline.eval.evaluate import evaluate
from tuneline.eval.scoring import gain
from tuneline.export.gate import ExportChecks, Gate, verdict
from tuneline.export.records import ExportFile
from tuneline.promote import decide
from tuneline.train.checkpoints import checkpoint_dir
from tuneline.train.sft import build_trainer, train

WORDS = ["the", "king", "and", "queen", "of", "night", "walk", "in", "the", "garden", "while", "a", "storm", "of",
         "words", "falls", "on", "the", "crown"]
MAX_TOKENS = 32
# Documents of 10-60 words: several share a block, the longest run on into the next one.
DOCS = [" ".join(random.Random(i).choices(WORDS, k=10 + 5 * (i % 11))) for i in range(24)]
RECORDS = [{"id": f"play.txt:{i}", "split": "train", "source": "play.txt", "line": i, "shape": "text", "prompt": "[]",
            "assistant": d, "label": None} for i, d in enumerate(DOCS)]
SFT = SFTConfig(learning_rate=1e-2, batch_size=4, max_steps=6, logging_steps=2, eval_steps=None)


def test_documents_train_packed_with_loss_on_every_token(tiny_ref, tiny_tok, isolated_checkpoints):
    trainer = build_trainer(tiny_ref, RECORDS, SFT, checkpoint_dir("sft", "text-test"), MAX_TOKENS)
    assert trainer.args.packing and not trainer.args.completion_only_loss
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    # Padding-free packing: one row of blocks, each document (or piece of one) restarting its positions.
    assert ids.shape[0] == 1 and int(pos.max()) < MAX_TOKENS
    starts = pos == 0
    assert int(starts.sum()) > SFT.batch_size  # more documents than blocks: packed
    # Every token is a target except where a sequence starts (nothing before it to predict it from).
    assert bool((labels[~starts] == ids[~starts]).all()) and bool((labels[starts] == -100).all())
    # No template: the first block starts with a document's own first token, and documents end with EOS.
    im_start = tiny_tok.convert_tokens_to_ids("<|im_start|>")
    assert tiny_tok.eos_token_id in ids[0].tolist() and not (ids == im_start).any()


@pytest.fixture(scope="module")
def adapted(tiny_ref, tmp_path_factory):
    from tuneline.train import checkpoints

    root, checkpoints.CHECKPOINT_ROOT = checkpoints.CHECKPOINT_ROOT, tmp_path_factory.mktemp("ckpt")
    try:
        out = tmp_path_factory.mktemp("sft")
        res = train(tiny_ref, RECORDS, SFT, out, MAX_TOKENS)
    finally:
        checkpoints.CHECKPOINT_ROOT = root
    return out, res


def test_held_out_perplexity_per_candidate_lower_is_better(tiny_ref, adapted):
    out, res = adapted
    assert res.metrics["final_loss"] < res.metrics["first_loss"]
    cfg = EvaluateConfig(metric="perplexity", mmlu=None, gsm8k=None, perplexity=None, bootstrap_resamples=200)
    # The adapter saw these documents: its perplexity on them must fall, and the gain read as positive.
    report = evaluate(tiny_ref, {"sft": str(out)}, "lora", RECORDS[:12], cfg, 4)
    base, sft = report.task["base"], report.task["sft"]
    assert base.metric == sft.metric == "perplexity" and base.n == sft.n == 12 and sft.predictions == []
    assert sft.score < base.score and len(sft.per_item) == 12
    d = report.task_vs_base["sft"]
    assert d.diff < 0 and gain(d, "perplexity")[0] == -d.diff > 0
    decision = decide(report, [], PromoteConfig(min_task_gain=0.05, compare_to_current=False))
    assert decision.promote, decision.reasons
    assert decision.reasons[0].startswith("task perplexity") and "mean NLL drop +" in decision.reasons[0]
    # Reports print a perplexity as a number and its change in mean NLL, never as a percentage.
    assert f"| sft | {sft.score:.2f} (NLL -" in evaluation_markdown(report)
    assert f"  sft          {sft.score:.2f}  vs base NLL -" in run_summary(report, [], decision.sentence(), None)
    # The other way round: a model whose perplexity rose is no gain.
    worse = report.model_copy(update={"task": {"base": sft, "sft": base}, "task_vs_base": {
        "sft": d.model_copy(update={"diff": -d.diff, "ci_low": -d.ci_high, "ci_high": -d.ci_low})}})
    assert not decide(worse, [], PromoteConfig(compare_to_current=False)).promote


def test_export_gate_reads_task_perplexity_as_lower_is_better():
    gate = Gate(reference_accuracy=20.0, max_accuracy_drop=0.02, max_ppl_increase={"F16": 0.005, "*": 0.05},
                min_eos_share=0.0, metric="perplexity")
    ok, why = verdict(ExportFile(format="gguf", qtype="F16", path="x", score=19.0), gate)
    assert ok and "task perplexity 19.000 vs merged 20.000" in why
    ok, why = verdict(ExportFile(format="gguf", qtype="F16", path="x", score=20.5), gate)
    assert not ok and "limit +0.50%" in why


def test_gguf_export_of_a_text_task_is_judged_on_held_out_perplexity(tiny_ref, tmp_path):
    from tuneline.export.gguf import export_gguf

    checks = ExportChecks(metric="perplexity")  # no general texts, no benchmarks: the task check alone
    res = export_gguf(tiny_ref.path, tmp_path, RECORDS[:6], ExportConfig(gguf_types=["f16"], benchmarks=False), checks)
    (f16,) = res.files
    assert res.reference.metric == "perplexity" and res.reference.n == 6
    assert f16.passed, f16.reason
    assert f16.score == pytest.approx(res.reference.score, rel=0.005) and len(f16.per_item) == 6
    assert f16.serve is None and f16.samples == []  # nothing to ask: no serving check
    assert not f16.modelfile and f16.modelfile_note.startswith("no Modelfile: a text task")
