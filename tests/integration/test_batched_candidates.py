"""Several LoRA candidates in one pass (PEFT mixed-adapter batches) give each candidate the per-item results of
scoring it alone: the same greedy answers, the same NLLs within 1e-4.

    .venv/bin/pytest -q tests/integration/test_batched_candidates.py
"""

import json

import pytest
import torch

from tuneline.config import EvaluateConfig, PerplexityConfig
from tuneline.eval.candidates import BASE, batchable, score_candidates
from tuneline.eval.evaluate import BaseEvaluation, base_key, evaluate
from tuneline.eval.perplexity import general_texts, perplexities, perplexity
from tuneline.eval.task import score_task
from tuneline.model.adapters import load_adapter
from tuneline.model.base import load_model

MAX_NEW = 4
# Short general texts: a text's logits are tokens x 49k vocabulary floats, long ones cost seconds here.
TEXTS = [" ".join(f"word{(i * 7 + j) % 13} and more" for j in range(4 + 3 * i)) for i in range(6)]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> EvaluateConfig:
    path = tmp_path_factory.mktemp("general") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return EvaluateConfig(mmlu=None, gsm8k=None, batch_size=5, bootstrap_resamples=100, benchmark_candidates="all",
                          perplexity=PerplexityConfig(file=str(path), field="text", rows=6, min_words=5, batch_size=4))


def random_lora(ref, out, seed: int, dora: bool = False) -> str:
    """A freshly initialised LoRA adapter with random B (PEFT starts B at 0, which would equal the base)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(ref), LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", use_dora=dora))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapters(tiny_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"sft": random_lora(tiny_ref, root / "sft", 1), "dpo": random_lora(tiny_ref, root / "dpo", 2)}


@pytest.fixture(scope="module")
def rows(tiny_data):
    return tiny_data.task[tiny_data.task.split == "eval"].to_dict("records")[:12]


@pytest.fixture(scope="module")
def peft(tiny_ref, adapters):
    model = load_model(tiny_ref).eval()
    for name, path in adapters.items():
        model = load_adapter(model, path, adapter_name=name)
    return model.eval()


def test_one_pass_gives_each_candidate_its_own_answers_and_nlls(peft, tiny_tok, rows, cfg):
    names = ["sft", "dpo", BASE]
    together = score_candidates(peft, tiny_tok, rows, names, MAX_NEW, 5, "token_f1")
    texts = general_texts(cfg)
    ppl = dict(zip(names, perplexities(peft, tiny_tok, texts, names, 4)))
    for name in names:
        if name == BASE:
            with peft.disable_adapter():
                alone = score_task(peft, tiny_tok, rows, MAX_NEW, 5, "token_f1")
                ppl_alone = perplexity(peft, tiny_tok, texts, 4)
        else:
            peft.set_adapter(name)
            alone = score_task(peft, tiny_tok, rows, MAX_NEW, 5, "token_f1")
            ppl_alone = perplexity(peft, tiny_tok, texts, 4)
        assert together[name].predictions == alone.predictions, name
        assert together[name].per_item == alone.per_item and together[name].item_ids == alone.item_ids
        assert ppl[name].per_item == pytest.approx(ppl_alone.per_item, abs=1e-4), name
    # The adapters really differ, so routing each row to its own adapter is what is being checked.
    assert together["sft"].predictions != together["dpo"].predictions
    assert ppl["sft"].per_item != pytest.approx(ppl["dpo"].per_item, abs=1e-3)
    # Document perplexity (metric perplexity) goes through the same mixed forward.
    docs = [{**r, "shape": "text"} for r in rows[:4]]
    together = score_candidates(peft, tiny_tok, docs, ["sft", "dpo"], MAX_NEW, 4, "perplexity")
    peft.set_adapter("dpo")
    assert together["dpo"].per_item == pytest.approx(score_task(peft, tiny_tok, docs, MAX_NEW, 4, "perplexity").per_item,
                                                     abs=1e-4)


def test_evaluate_batches_lora_and_falls_back_for_dora(tiny_ref, adapters, rows, cfg, tmp_path):
    assert batchable(adapters["sft"]) and not batchable(tmp_path)
    dora = random_lora(tiny_ref, tmp_path / "dora", 3, dora=True)
    assert not batchable(dora)
    report = evaluate(tiny_ref, adapters, "lora", rows[:6], cfg, MAX_NEW)  # sft + dpo in one pass
    # One batchable adapter and a DoRA one: the one-candidate path for both (the base result is reused).
    base = {"task": report.task["base"], "perplexity": report.perplexity["base"]}
    mixed = evaluate(tiny_ref, {"sft": adapters["sft"], "dora": dora}, "lora", rows[:6], cfg, MAX_NEW,
                     base=BaseEvaluation(**base, settings=base_key(cfg)))
    assert report.task["sft"].predictions == mixed.task["sft"].predictions
    assert report.perplexity["sft"].per_item == pytest.approx(mixed.perplexity["sft"].per_item, abs=1e-4)
    assert mixed.task["base"] == report.task["base"] and mixed.task["dora"].predictions != mixed.task["sft"].predictions
    assert set(report.task) == {"base", "sft", "dpo"} and report.final == "dpo" and report.nll_vs_base is not None
