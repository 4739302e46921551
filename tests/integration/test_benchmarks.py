import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import math
import tempfile
from pathlib import Path

import pytest

from tuneline.eval import benchmarks as B
from tuneline.config import BaseModelConfig, EvaluateConfig, GSM8KConfig, MMLUConfig

SUBJECTS = ["marketing", "abstract_algebra"]
DOC = {"question": " What is 2+2? ", "A": "3", "B": "4", "C": "5", "D": "None", "answer": "B"}
SHOT = {"question": "Pick C.", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "C"}


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    "output, expected",
    [
        ("so she makes 9 * 2 = 18\n#### 1,234", "1234"),
        ("#### 18 and later 42", "18"),  # '#### N' wins over the last number
        ("The answer is $5.", "5"),
        ("3 apples and 4 pears make 7 fruits", "7"),
        ("It drops to -12 degrees", "-12"),
        ("He pays $1,000.50 in total.", "1000.50"),
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_answer(output, expected):
    assert B.extract_answer(output) == expected


def test_gsm8k_scoring_against_reference():
    doc = {"question": "q", "answer": "2+2=<<2+2=4>>4\n#### 1,004"}
    assert B.gsm8k_reference(doc) == "1004"
    assert B.gsm8k_process_results(doc, [" 1000 + 4 = 1004"]) == {"exact_match": 1.0}
    assert B.gsm8k_process_results(doc, ["#### 1004.0"]) == {"exact_match": 0.0}


def test_gsm8k_items_come_after_the_pool():
    assert B.gsm8k_items(GSM8KConfig(limit=3, fewshot_pool=20)) == [20, 21, 22]
    with pytest.raises(ValueError, match="fewshot_pool"):
        B.gsm8k_task_config(GSM8KConfig(num_fewshot=5, fewshot_pool=2))


def test_mmlu_letter_prompt():
    assert B.mmlu_prompt("high_school_geography", DOC, "letter", (SHOT,)) == (
        "The following are multiple choice questions (with answers) about high school geography.\n\n"
        "Pick C.\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. None\nAnswer:"
    )
    assert B.mmlu_choices(DOC, "letter") == ["A", "B", "C", "D"]
    assert B.mmlu_target(DOC) == 1


def test_mmlu_cloze_prompt():
    assert B.mmlu_prompt("marketing", DOC, "cloze", (SHOT,)) == (
        "The following are questions (with answers) about marketing.\n\n"
        "Question: Pick C.\nAnswer: c\n\n"
        "Question: What is 2+2?\nAnswer:"
    )
    assert B.mmlu_choices(DOC, "cloze") == ["3", "4", "5", "None"]


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_lm_eval_builds_the_same_prompt_from_the_csv(fmt):
    """The YAML lm-eval loads (CSV columns, converters, shots) gives exactly mmlu_prompt's text."""
    from lm_eval.tasks import TaskManager

    subject = "abstract_algebra"  # numeric choices: must stay strings ("0", not 0)
    with tempfile.TemporaryDirectory() as tmp:
        B.write_task_yaml(B.mmlu_task_config(subject, fmt, num_fewshot=2), Path(tmp))
        name = B.mmlu_task_name(subject, fmt)
        task = TaskManager(include_path=tmp, include_defaults=False).load([name])["tasks"][name]
    doc = task.test_docs()[0]
    shots = tuple(task.fewshot_docs())[:2]
    assert doc["A"] == "0" and isinstance(doc["A"], str)
    assert task.fewshot_context(doc, num_fewshot=2) == B.mmlu_prompt(subject, doc, fmt, shots)


# ---------------------------------------------------------------- real lm-eval runs on the tiny model


@pytest.fixture(scope="module")
def tiny():
    from tuneline.model.base import load_tokenizer, prepare

    ref = prepare(BaseModelConfig(source="tiny"))
    return ref, load_tokenizer(ref)


def _cfg(fmt: str = "letter", shots: int = 1) -> EvaluateConfig:
    return EvaluateConfig(
        batch_size=8,
        mmlu=MMLUConfig(subjects=SUBJECTS, format=fmt, limit_per_subject=3, num_fewshot=shots),
        gsm8k=GSM8KConfig(limit=2, num_fewshot=1, max_new_tokens=16),
    )


def test_run_benchmarks_per_item_and_determinism(tiny):
    from tuneline.model.base import load_model

    ref, tok = tiny
    model = load_model(ref)
    first = B.run_benchmarks(model, tok, _cfg())
    second = B.run_benchmarks(model, tok, _cfg())
    mmlu, gsm = first["mmlu"], first["gsm8k"]
    assert mmlu.name == "mmlu_letter" and mmlu.metric == "acc"
    assert mmlu.item_ids == [f"{s}:{i:04d}" for s in sorted(SUBJECTS) for i in range(3)]
    assert len(mmlu.per_item) == mmlu.n == 6 and set(mmlu.per_item) <= {0.0, 1.0}
    assert set(mmlu.per_subject) == set(SUBJECTS)
    assert mmlu.score == pytest.approx(sum(mmlu.per_subject.values()) / 2)
    assert gsm.item_ids == ["gsm8k:0020", "gsm8k:0021"] and len(gsm.per_item) == gsm.n == 2
    for name in first:
        assert first[name].per_item == second[name].per_item
        assert first[name].item_ids == second[name].item_ids


def test_none_sections_are_skipped(tiny):
    from tuneline.model.base import load_model

    ref, tok = tiny
    model = load_model(ref)
    assert B.run_benchmarks(model, tok, EvaluateConfig(mmlu=None, gsm8k=None)) == {}
    only = B.run_benchmarks(model, tok, _cfg("cloze", 0).model_copy(update={"gsm8k": None}))
    assert list(only) == ["mmlu"] and only["mmlu"].metric == "acc_norm"


def _loglikelihoods(model, tok) -> list[float]:
    cfg = B.mmlu_task_config("marketing", "cloze", 0)
    out = B._evaluate(B._lm(model, tok, 8), [cfg], seed=0, limit=2)
    return [r[0][0] for s in out["samples"][cfg["task"]] for r in s["resps"]]


def test_peft_model_runs_in_memory_with_its_adapter(tiny):
    from peft import LoraConfig, get_peft_model

    from tuneline.model.base import load_model

    ref, tok = tiny
    base_ll = _loglikelihoods(load_model(ref), tok)
    # Non-zero LoRA weights, so an ignored adapter would show as unchanged log-likelihoods.
    peft = get_peft_model(load_model(ref), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.train()
    results = B.run_benchmarks(peft, tok, _cfg("cloze", 0))
    assert results["mmlu"].n == 6 and results["gsm8k"].n == 2
    assert peft.training, "run_benchmarks restores the caller's train/eval mode"
    assert _loglikelihoods(peft, tok) != pytest.approx(base_ll)
    with peft.disable_adapter():
        assert _loglikelihoods(peft, tok) == pytest.approx(base_ll, abs=1e-4)


def test_perplexity_batched_matches_unbatched(tiny):
    from tuneline.model.base import load_model

    ref, tok = tiny
    model = load_model(ref)
    texts = ["Hello world, this is a test.", "A longer text, so that the batch needs some padding here.", "Hi there"]
    one, three = B.perplexity(model, tok, texts, batch_size=1), B.perplexity(model, tok, texts, batch_size=3)
    assert one.per_item == pytest.approx(three.per_item, abs=1e-4)
    n_scored = [len(tok(t, add_special_tokens=False)["input_ids"]) - 1 for t in texts]
    assert one.n_tokens == sum(n_scored)
    weighted = sum(nll * n for nll, n in zip(one.per_item, n_scored)) / sum(n_scored)
    assert one.ppl == pytest.approx(math.exp(weighted))
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        B.perplexity(model, tok, ["Hi"])
