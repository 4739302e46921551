"""SharedContextHFLM (one pass per MMLU question, answers on its KV cache) equals lm-eval's HFLM per item.

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/integration/test_mmlu_kv_reuse.py

Real lm-eval runs of the bundled MMLU CSVs on the tiny random Llama, bare and LoRA-wrapped: the same
log-likelihood per (item, answer) within 1e-4, the same acc and acc_norm per item, and fewer tokens
through the model.
"""

import pytest

from tuneline.eval import harness as H
from tuneline.eval import mmlu

SUBJECTS = ["marketing", "abstract_algebra"]
ITEMS = 3


@pytest.fixture(scope="module")
def models(tiny_ref):
    from peft import LoraConfig, get_peft_model

    from tuneline.model.base import load_model

    # Non-zero LoRA weights: an adapter the fast path ignored would change the scores.
    peft = get_peft_model(load_model(tiny_ref), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return {"base": load_model(tiny_ref).eval(), "lora": peft.eval()}


def _run(model, tok, fmt: str, shots: int, reuse: bool) -> tuple[dict, int]:
    """Per (task, doc_id): the answers' log-likelihoods and the item's acc/acc_norm; and tokens run."""
    seen = [0]
    embed = model.get_input_embeddings()
    hook = embed.register_forward_pre_hook(lambda _, args: seen.__setitem__(0, seen[0] + args[0].numel()))
    try:
        configs = [mmlu.mmlu_task_config(s, fmt, shots) for s in SUBJECTS]
        out = H.run_tasks(H._lm(model, tok, 4, reuse_context=reuse), configs, seed=0, limit=ITEMS)
    finally:
        hook.remove()
    items = {(task, s["doc_id"]): ([r[0][0] for r in s["resps"]], s["acc"], s["acc_norm"])
             for task, samples in out["samples"].items() for s in samples}
    return items, seen[0]


@pytest.mark.parametrize(("name", "fmt", "shots"), [("base", "cloze", 0), ("lora", "cloze", 1), ("base", "letter", 1)])
def test_shared_context_scores_equal_lm_eval(models, tiny_tok, name, fmt, shots):
    reference, ref_tokens = _run(models[name], tiny_tok, fmt, shots, reuse=False)
    shared, shared_tokens = _run(models[name], tiny_tok, fmt, shots, reuse=True)
    assert len(reference) == len(SUBJECTS) * ITEMS and shared.keys() == reference.keys()
    for key, (ll, acc, acc_norm) in reference.items():
        assert shared[key][0] == pytest.approx(ll, abs=1e-4), key
        assert shared[key][1:] == (acc, acc_norm), key
    # Cloze: the question once instead of four times; letter: lm-eval already shares one-token answers.
    assert shared_tokens < ref_tokens / (2 if fmt == "cloze" else 1)


def test_run_benchmarks_takes_the_shared_path_unless_told(models, tiny_tok):
    from tuneline.config import EvaluateConfig, MMLUConfig

    def cfg(reuse: bool) -> EvaluateConfig:
        return EvaluateConfig(gsm8k=None, mmlu=MMLUConfig(subjects=SUBJECTS[:1], limit_per_subject=2, reuse_context=reuse))

    calls = []
    cls = H.shared_context_hflm()
    inner = cls._context
    cls._context = lambda self, ctx: calls.append(len(ctx)) or inner(self, ctx)
    try:
        fast = H.run_benchmarks(models["lora"], tiny_tok, cfg(True))["mmlu"]
        assert len(calls) == 2, "one context pass per item"
        slow = H.run_benchmarks(models["lora"], tiny_tok, cfg(False))["mmlu"]
        assert len(calls) == 2, "reuse_context: false is lm-eval's HFLM"
    finally:
        cls._context = inner
    assert fast.per_item == slow.per_item and fast.item_ids == slow.item_ids
