"""The base's scores as a record of their own (evaluate_base): equal to scoring the base inline, keyed on what
can change them, and used by `evaluate` only where they fit the rows and settings.

    .venv/bin/pytest -q tests/unit/eval/test_base_evaluation.py
"""

import json

import pytest

from tuneline.config import EvaluateConfig, PerplexityConfig
from tuneline.eval.evaluate import BaseEvaluation, EvalRows, base_key, base_settings, eval_rows, evaluate_base
from tuneline.eval.perplexity import general_texts, perplexity
from tuneline.eval.task import score_task
from tuneline.model.base import load_model
from tuneline.model.precision import eval_autocast

# Short general texts: a long one's logits (tokens x 49k vocabulary floats) cost seconds on the tiny model.
TEXTS = [" ".join(f"token{(i * 5 + j) % 11} in a text" for j in range(3 + 2 * i)) for i in range(4)]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> EvaluateConfig:
    path = tmp_path_factory.mktemp("general") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return EvaluateConfig(mmlu=None, gsm8k=None, batch_size=4,
                          perplexity=PerplexityConfig(file=str(path), field="text", rows=4, min_words=5))


@pytest.fixture(scope="module")
def rows(tiny_data):
    return eval_rows(tiny_data.task)


def test_eval_rows_are_the_eval_split_and_survive_the_artifact_round_trip(tiny_data, rows):
    task = tiny_data.task
    assert [r["id"] for r in rows.rows] == list(task[task.split == "eval"].id) and rows.max_new_tokens > 0
    assert EvalRows.model_validate_json(rows.model_dump_json()) == rows  # what the artifact store gives back


def test_base_result_equals_scoring_the_base_inline(tiny_ref, tiny_tok, rows, cfg):
    records = rows.rows[:8]
    base = evaluate_base(tiny_ref, records, cfg, 3)
    model = load_model(tiny_ref).eval()
    with eval_autocast(cfg.bf16):  # as evaluate_base scores (evaluate.bf16)
        inline = score_task(model, tiny_tok, records, 3, cfg.batch_size, cfg.metric)
        ppl = perplexity(model, tiny_tok, general_texts(cfg))
    assert base.task.predictions == inline.predictions and base.task.per_item == inline.per_item
    assert base.perplexity.per_item == pytest.approx(ppl.per_item, abs=1e-5)
    assert base.benchmarks == {} and not base.quantize_4bit
    # A stored result (the artifact) fits the same rows and settings, and nothing else.
    stored = BaseEvaluation.model_validate_json(base.model_dump_json())
    assert stored.fits(records, cfg, False) == ""
    assert stored.fits(records, cfg.model_copy(update={"bootstrap_resamples": 500}), False) == ""
    assert "other eval rows" in stored.fits(records[:4], cfg, False)
    assert "4-bit" in stored.fits(records, cfg, True)
    assert "settings" in stored.fits(records, cfg.model_copy(update={"batch_size": 2}), False)


def test_candidate_only_settings_do_not_change_the_base_key(cfg):
    a = cfg.model_copy(update={"bootstrap_resamples": 300, "benchmark_candidates": "final"})
    assert base_settings(a) == base_settings(cfg) and base_key(a) == base_key(cfg)
    assert base_key(cfg.model_copy(update={"metric": "token_f1"})) != base_key(cfg)
