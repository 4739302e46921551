import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile
from pathlib import Path

import pytest

from tuneline.config import BaseModelConfig, EvaluateConfig, GSM8KConfig, MMLUConfig
from tuneline.eval import harness as H
from tuneline.eval import mmlu

SUBJECTS = ["marketing", "abstract_algebra"]


# ---------------------------------------------------------------- the task YAML lm-eval loads


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_lm_eval_builds_the_same_prompt_from_the_csv(fmt):
    """The YAML lm-eval loads (CSV columns, converters, shots) gives exactly mmlu_prompt's text."""
    from lm_eval.tasks import TaskManager

    subject = "abstract_algebra"  # numeric choices: must stay strings ("0", not 0)
    with tempfile.TemporaryDirectory() as tmp:
        H.write_task_yaml(mmlu.mmlu_task_config(subject, fmt, num_fewshot=2), Path(tmp))
        name = mmlu.mmlu_task_name(subject, fmt)
        task = TaskManager(include_path=tmp, include_defaults=False).load([name])["tasks"][name]
    doc = task.test_docs()[0]
    shots = tuple(task.fewshot_docs())[:2]
    assert doc["A"] == "0" and isinstance(doc["A"], str)
    assert task.fewshot_context(doc, num_fewshot=2) == mmlu.mmlu_prompt(subject, doc, fmt, shots)


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
    first = H.run_benchmarks(model, tok, _cfg())
    second = H.run_benchmarks(model, tok, _cfg())
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
    assert H.run_benchmarks(model, tok, EvaluateConfig(mmlu=None, gsm8k=None)) == {}
    only = H.run_benchmarks(model, tok, _cfg("cloze", 0).model_copy(update={"gsm8k": None}))
    assert list(only) == ["mmlu"] and only["mmlu"].metric == "acc_norm"


def _loglikelihoods(model, tok) -> list[float]:
    cfg = mmlu.mmlu_task_config("marketing", "cloze", 0)
    out = H.run_tasks(H._lm(model, tok, 8), [cfg], seed=0, limit=2)
    return [r[0][0] for s in out["samples"][cfg["task"]] for r in s["resps"]]


def test_peft_model_runs_in_memory_with_its_adapter(tiny):
    from peft import LoraConfig, get_peft_model

    from tuneline.model.base import load_model

    ref, tok = tiny
    base_ll = _loglikelihoods(load_model(ref), tok)
    # Non-zero LoRA weights, so an ignored adapter would show as unchanged log-likelihoods.
    peft = get_peft_model(load_model(ref), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.train()
    results = H.run_benchmarks(peft, tok, _cfg("cloze", 0))
    assert results["mmlu"].n == 6 and results["gsm8k"].n == 2
    assert peft.training, "run_benchmarks restores the caller's train/eval mode"
    assert _loglikelihoods(peft, tok) != pytest.approx(base_ll)
    with peft.disable_adapter():
        assert _loglikelihoods(peft, tok) == pytest.approx(base_ll, abs=1e-4)


@pytest.mark.parametrize("bf16", ["true", "false"])
def test_evaluate_bf16_reaches_every_forward_of_the_base_evaluation(tiny, tiny_data, bf16):
    """evaluate.bf16 (precision.eval_autocast around evaluate_base): the task rows, lm-eval's MMLU loglikelihoods and
    GSM8K generations compute in bf16; lm-eval's HFLM, which wraps each forward in an autocast of its own, must not
    switch the caller's off. "false" keeps every forward in fp32. General-text perplexity is fp32 either way."""
    import torch

    from tuneline.eval.evaluate import evaluate_base
    from tuneline.eval.perplexity import perplexity
    from tuneline.model.base import load_model
    from tuneline.model.precision import eval_autocast

    ref, tok = tiny
    model = load_model(ref).eval()
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    records = tiny_data.task[tiny_data.task.split == "eval"].head(4).to_dict("records")
    cfg = _cfg("cloze").model_copy(update={"bf16": bf16, "perplexity": None})
    result = evaluate_base(ref, records, cfg, 4, model=model, tokenizer=tok)
    assert set(result.benchmarks) == {"mmlu", "gsm8k"} and result.task.n == 4
    assert len(seen) > 10 and set(seen) == {torch.bfloat16 if bf16 == "true" else torch.float32}
    seen.clear()
    with eval_autocast(bf16):
        perplexity(model, tok, ["A short general text about a lost card.", "Another one, about a transfer."])
    assert seen and set(seen) == {torch.float32}
