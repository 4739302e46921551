"""AdapterSet on the tiny model: two adapters built to answer different tokens; switching flips the answer,
disabling them gives the base's, stacking adds their deltas.

    .venv/bin/pytest -q tests/unit/model/test_adapter_set.py

Each adapter is a rank-1 LoRA on lm_head, set by hand (nothing is trained): A reads the base's last hidden state
of the prompt, B writes a large logit on the adapter's own token, so for that prompt the adapter's greedy answer
is its token.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tuneline.model.adapter_set import AdapterSet
from tuneline.model.base import load_model

PROMPT = torch.tensor([[1, 20, 30, 40, 50]])
BOOST = 50.0


def _prefers(ref, path, token: int) -> str:
    base = load_model(ref).eval()
    with torch.no_grad():
        h = base(PROMPT, output_hidden_states=True).hidden_states[-1][0, -1]
    model = get_peft_model(base, LoraConfig(r=1, lora_alpha=1, target_modules=["lm_head"]))
    layer = model.base_model.model.lm_head
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_((h / h.dot(h))[None])
        layer.lora_B["default"].weight.zero_()[token, 0] = BOOST
    model.save_pretrained(path)
    return str(path)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits[0, -1]


@pytest.fixture(scope="module")
def adapters(tiny_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapter_set")
    return AdapterSet.load(tiny_ref, {"yes": _prefers(tiny_ref, d / "yes", 1000), "no": _prefers(tiny_ref, d / "no", 2000)})


def test_switching_flips_the_answer_and_the_base_comes_back(tiny_ref, adapters):
    base = _logits(load_model(tiny_ref).eval())
    assert base.argmax() not in (1000, 2000)
    assert _logits(adapters.use("yes")).argmax() == 1000 and adapters.active == ["yes"]
    assert _logits(adapters.use("no")).argmax() == 2000
    with adapters.base() as model:
        torch.testing.assert_close(_logits(model), base)
    assert _logits(adapters.model).argmax() == 2000  # the active adapter is back after the block


def test_stacking_adds_the_deltas(tiny_ref, adapters):
    base = _logits(load_model(tiny_ref).eval())
    yes, no = _logits(adapters.use("yes")) - base, _logits(adapters.use("no")) - base
    both = _logits(adapters.use("yes", "no")) - base
    torch.testing.assert_close(both, yes + no, atol=1e-3, rtol=1e-4)
    assert sorted(adapters.active) == ["no", "yes"]


def test_unknown_names_say_what_the_set_holds(adapters):
    with pytest.raises(ValueError, match=r"this set holds \['yes', 'no'\]"):
        adapters.use("legal")
