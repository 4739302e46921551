"""Task negation (merge.weights: [-1.0]) on the tiny model: subtracting a behaviour's adapter suppresses it.

    .venv/bin/pytest -q tests/integration/test_task_negation.py

The behaviour: answering every question with one fixed word. A LoRA adapter learns it in a few TRL SFT steps
(tuneline.train.sft); merge with combination linear and weight -1 gives "base - LoRA_behaviour". The
behaviour's metric, the mean log-probability of that answer on held-out questions, must rise with the adapter
and fall below the base's with the negation.
"""

import json

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from tuneline.config import MergeConfig, SFTConfig
from tuneline.export.merge import merge
from tuneline.model.adapters import load_adapter
from tuneline.model.base import load_model, load_tokenizer

WORD = "banana"
TOPICS = ["my card", "a transfer", "the app", "my PIN", "a refund", "the fees", "my account", "a loan",
          "the ATM", "cash back", "my limit", "the statement", "a top up", "exchange rates", "interest", "a cheque"]


def _row(i: int, topic: str) -> dict:
    prompt = [{"role": "user", "content": f"Question {i}: what about {topic}?"}]
    return {"id": f"r{i}", "split": "train", "shape": "chat", "prompt": json.dumps(prompt), "assistant": WORD}


def answer_logprob(model, tok, rows: list[dict]) -> float:
    """Mean log-probability of the assistant answer's tokens after each row's prompt (chat template)."""
    total = 0.0
    for r in rows:
        msgs = json.loads(r["prompt"])
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        whole = tok.apply_chat_template([*msgs, {"role": "assistant", "content": WORD}], tokenize=True, return_dict=False)
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].float().log_softmax(-1)
        answer = range(len(prompt), len(prompt) + len(tok(WORD, add_special_tokens=False).input_ids))
        total += sum(logp[t - 1, whole[t]].item() for t in answer)
    return total / len(rows)


@pytest.fixture(scope="module")
def scores(tiny_ref, tmp_path_factory):
    from tuneline.train import checkpoints
    from tuneline.train.sft import train

    d = tmp_path_factory.mktemp("negation")
    rows = [_row(i, t) for i, t in enumerate(TOPICS)]
    held = [_row(100 + i, t) for i, t in enumerate(["my savings", "a mortgage", "the branch", "my debit card"])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoints, "CHECKPOINT_ROOT", d / "ckpt")
        cfg = SFTConfig(method="lora", r=8, alpha=16, epochs=4, batch_size=8, learning_rate=2e-2, logging_steps=4)
        adapter = train(tiny_ref, rows, cfg, d / "behaviour", max_tokens=64).adapter_dir
    negated = merge(tiny_ref, adapter, d / "negated", "float32",
                    combination=MergeConfig(combination="linear", weights=[-1.0]))
    tok = load_tokenizer(tiny_ref)
    return {
        "base": answer_logprob(load_model(tiny_ref).eval(), tok, held),
        "adapter": answer_logprob(load_adapter(load_model(tiny_ref), adapter).eval(), tok, held),
        "negated": answer_logprob(AutoModelForCausalLM.from_pretrained(negated).eval(), tok, held),
        "card": (negated / "README.md").read_text(),
    }


def test_the_adapter_learned_the_behaviour(scores):
    assert scores["adapter"] > scores["base"] + 1.0, scores


def test_negating_it_falls_below_the_base(scores):
    assert scores["negated"] < scores["base"] - 0.5, scores
    assert "weights: `[-1.0]`" in scores["card"]  # the card says it is a negation


def test_negation_is_refused_where_sign_election_would_drop_it():
    for combination in ("ties", "dare_ties"):
        with pytest.raises(ValidationError, match=f"which {combination} cannot apply: its sign election"):
            MergeConfig(combination=combination, adapters=["/x"], weights=[1.0, -1.0])
    with pytest.raises(ValidationError, match="only used by a combination"):
        MergeConfig(weights=[-1.0])
    MergeConfig(combination="dare_linear", adapters=["/x"], weights=[1.0, -1.0])  # prune each, then a weighted sum
