"""Combining several LoRA adapters into one merged model (merge.combination), on the tiny model.

    .venv/bin/pytest -q tests/integration/test_merge_combine.py

Adapters are made with PEFT directly (random A and B, no training), so each expected result can be
written down: a single adapter equals merge_and_unload, linear adds the weighted deltas, TIES keeps
the elected sign on a constructed pair of opposite deltas, magnitude pruning and DARE keep the share
`density` of each delta.
"""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import ValidationError

from tuneline.config import MergeConfig
from tuneline.export.merge import combine
from tuneline.model.base import load_model

LAYER = "model.layers.0.self_attn.q_proj.weight"


def _adapter(ref, path, seed: int, scale_b: float = 1.0, like=None, **lora):
    torch.manual_seed(seed)
    model = get_peft_model(load_model(ref), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                       init_lora_weights=False, **lora))
    if like is not None:  # same A as `like`, B scaled: a delta that is a multiple of like's
        src = PeftModel.from_pretrained(load_model(ref), like)
        with torch.no_grad():
            for (n, p), (_, q) in zip(model.named_parameters(), src.named_parameters(), strict=True):
                p.copy_(q * (scale_b if "lora_B" in n else 1.0))
    model.save_pretrained(path)
    return str(path)


def _delta(ref, path) -> torch.Tensor:
    merged = PeftModel.from_pretrained(load_model(ref), path).merge_and_unload()
    return merged.state_dict()[LAYER] - load_model(ref).state_dict()[LAYER]


@pytest.fixture(scope="module")
def adapters(tiny_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    a = _adapter(tiny_ref, d / "a", seed=1)
    return {"a": a, "b": _adapter(tiny_ref, d / "b", seed=2), "neg_half_a": _adapter(tiny_ref, d / "n", 0, -0.5, like=a)}


def _combined(ref, dirs, **cfg) -> torch.Tensor:
    cfg = MergeConfig.model_construct(**{**MergeConfig().model_dump(), **cfg})
    return combine(ref, dirs, cfg).state_dict()[LAYER] - load_model(ref).state_dict()[LAYER]


def test_one_adapter_equals_merge_and_unload(tiny_ref, adapters):
    ids = torch.tensor([[1, 20, 30, 40]])
    cfg = MergeConfig.model_construct(**{**MergeConfig().model_dump(), "combination": "linear"})
    with torch.no_grad():
        got = combine(tiny_ref, [adapters["a"]], cfg)(ids).logits
        want = PeftModel.from_pretrained(load_model(tiny_ref), adapters["a"]).merge_and_unload()(ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_linear_adds_the_weighted_deltas(tiny_ref, adapters):
    got = _combined(tiny_ref, [adapters["a"], adapters["b"]], combination="linear", weights=[0.3, 0.7])
    want = 0.3 * _delta(tiny_ref, adapters["a"]) + 0.7 * _delta(tiny_ref, adapters["b"])
    assert torch.allclose(got, want, atol=1e-6)


def test_ties_keeps_the_elected_sign(tiny_ref, adapters):
    # Deltas d and -d/2: the elected sign is d's everywhere, only d agrees with it, so TIES gives d,
    # where linear would give d/2.
    got = _combined(tiny_ref, [adapters["a"], adapters["neg_half_a"]], combination="ties", density=1.0)
    d = _delta(tiny_ref, adapters["a"])
    assert torch.allclose(got, d, atol=1e-6)
    linear = _combined(tiny_ref, [adapters["a"], adapters["neg_half_a"]], combination="linear")
    assert torch.allclose(linear, d / 2, atol=1e-6)


def test_magnitude_prune_keeps_the_largest_share(tiny_ref, adapters):
    got = _combined(tiny_ref, [adapters["a"]], combination="magnitude_prune", density=0.25)
    d = _delta(tiny_ref, adapters["a"])
    kept = got != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    assert torch.allclose(got[kept], d[kept], atol=1e-6)
    assert d[kept].abs().min() >= d[~kept].abs().max() - 1e-6


def test_dare_drops_at_random_rescales_and_is_seeded(tiny_ref, adapters):
    dirs = [adapters["a"]]
    got = _combined(tiny_ref, dirs, combination="dare_linear", density=0.5, seed=7)
    d = _delta(tiny_ref, adapters["a"])
    kept = got != 0
    assert 0.4 < kept.float().mean().item() < 0.6
    assert torch.allclose(got[kept], d[kept] / 0.5, atol=1e-5)  # kept entries rescaled by 1/density
    assert torch.equal(got, _combined(tiny_ref, dirs, combination="dare_linear", density=0.5, seed=7))
    assert not torch.equal(got, _combined(tiny_ref, dirs, combination="dare_linear", density=0.5, seed=8))
    both = _combined(tiny_ref, [adapters["a"], adapters["b"]], combination="dare_ties", density=0.5)
    assert both.abs().sum() > 0


def test_config_says_what_is_missing():
    with pytest.raises(ValidationError, match="list their dirs in merge.adapters"):
        MergeConfig(combination="ties")
    with pytest.raises(ValidationError, match="only used by a combination"):
        MergeConfig(adapters=["/x"])
    with pytest.raises(ValidationError, match="2 values for 3 adapters"):
        MergeConfig(combination="linear", adapters=["/x", "/y"], weights=[1, 1])


def test_dora_is_refused_with_the_reason(tiny_ref, adapters, tmp_path):
    dora = _adapter(tiny_ref, tmp_path / "dora", seed=3, use_dora=True)
    cfg = MergeConfig.model_construct(**{**MergeConfig().model_dump(), "combination": "ties"})
    with pytest.raises(ValueError, match=r"\(DoRA\) adapter cannot be combined"):
        combine(tiny_ref, [adapters["a"], dora], cfg)
