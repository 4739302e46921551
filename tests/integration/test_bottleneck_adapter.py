"""Bottleneck adapters (sft.method bottleneck) on the tiny model: an untrained adapter is the base, training
lowers the loss and touches only the adapter, the saved dir reloads to identical logits, evaluation and DPO
take it, merge / GGUF export / merge.combination refuse it with the reason.

    .venv/bin/pytest -q tests/integration/test_bottleneck_adapter.py
"""

import dataclasses

import pytest
import torch
from peft import PeftConfig, get_peft_model
from pydantic import ValidationError
from test_methods import HELD_OUT, IDS, PREFS, ROWS  # the same rows and ids as every other method

import tuneline.train.sft as sft
from tuneline.config import DPOConfig, EvaluateConfig, SFTConfig, TunelineConfig
from tuneline.eval.evaluate import evaluate
from tuneline.export.gguf import convert
from tuneline.export.merge import merge
from tuneline.model.adapters import is_adapter_dir, load_adapter
from tuneline.model.base import load_model
from tuneline.train.bottleneck import BottleneckLayer, bottleneck_config, is_bottleneck
from tuneline.train.dpo import train as train_dpo
from tuneline.train.methods import METHODS, method_for


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tiny_ref, tmp_path_factory):
    """(result, the in-memory trained model, base state before training), trained once for the module."""
    import tuneline.train.checkpoints as checkpoints

    before = {k: v.clone() for k, v in load_model(tiny_ref).state_dict().items()}
    captured, record = {}, METHODS["bottleneck"]

    def grab(model, out):
        captured["model"] = model
        record.save(model, out)

    cfg = SFTConfig(method="bottleneck", bottleneck_size=8, max_steps=4, batch_size=2, learning_rate=2e-2,
                    lr_scheduler="constant", warmup_ratio=0.0, logging_steps=1, bf16="false", eval_steps=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoints, "CHECKPOINT_ROOT", tmp_path_factory.mktemp("ckpt"))
        mp.setitem(METHODS, "bottleneck", dataclasses.replace(record, save=grab))
        res = sft.train(tiny_ref, ROWS, cfg, tmp_path_factory.mktemp("bottleneck"))
    return res, captured["model"], before


def test_untrained_adapter_is_the_base_and_sits_where_configured(tiny_ref):
    """The up-projection starts at zero, so h + up(relu(down(h))) = h: exactly the base logits."""
    with torch.no_grad():
        base = load_model(tiny_ref).eval()(IDS).logits
        houlsby = get_peft_model(load_model(tiny_ref), bottleneck_config(8, ["attention", "mlp"])).eval()
        torch.testing.assert_close(houlsby(IDS).logits, base, rtol=0, atol=0)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in houlsby.named_modules() if isinstance(m, BottleneckLayer)}
    assert wrapped == {"self_attn", "mlp"}
    pfeiffer = get_peft_model(load_model(tiny_ref), bottleneck_config(8, ["mlp"]))
    layers = [n for n, m in pfeiffer.named_modules() if isinstance(m, BottleneckLayer)]
    assert len(layers) == 2 and all(n.endswith(".mlp") for n in layers)  # one per decoder layer
    down = pfeiffer.base_model.model.model.layers[0].mlp.lora_A["default"]
    assert (down.in_features, down.out_features) == (64, 8)


def test_trains_only_the_adapter_and_reloads_to_identical_logits(trained, tiny_ref):
    res, model, before = trained
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert res.metrics["steps"] == 4 and losses[-1] < losses[0], losses
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    base_sd = model.get_base_model().state_dict()
    for k, v in before.items():  # the base weights did not move
        key = k.replace(".self_attn.", ".self_attn.base_layer.").replace(".mlp.", ".mlp.base_layer.")
        assert torch.equal(base_sd.get(key, base_sd.get(k)), v), k

    assert is_adapter_dir(res.adapter_dir) and is_bottleneck(PeftConfig.from_pretrained(res.adapter_dir))
    reloaded = load_adapter(load_model(tiny_ref), res.adapter_dir).eval()
    assert isinstance(reloaded.base_model.model.model.layers[0].mlp, BottleneckLayer)
    with torch.no_grad():
        again, expected = reloaded(IDS).logits, model.eval()(IDS).logits
        plain = load_model(tiny_ref).eval()(IDS).logits
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    assert not torch.allclose(again, plain), "training changed nothing"


def test_merge_gguf_and_combination_refuse_it_with_the_reason(trained, tiny_ref, tmp_path):
    res, _, _ = trained
    assert not method_for("bottleneck").mergeable
    with pytest.raises(ValueError, match="cannot be merged: a bottleneck adapter is not a weight change: it adds layers"):
        merge(tiny_ref, res.adapter_dir, tmp_path / "merged", dtype="float32")
    with pytest.raises(ValueError, match="cannot be exported to GGUF: .* it adds layers"):
        convert(res.adapter_dir, tmp_path / "x.gguf")
    with pytest.raises(ValidationError, match="sft.method bottleneck adds layers"):
        TunelineConfig(sft={"method": "bottleneck"}, merge={"combination": "linear", "adapters": ["a"]})
    with pytest.raises(ValidationError, match="bottleneck_places"):
        SFTConfig(method="bottleneck", bottleneck_places=[])


def test_evaluation_and_dpo_take_it(trained, tiny_ref, tmp_path):
    """DPO continues the bottleneck adapter (TRL's frozen "ref" adapter is a bottleneck too), saves a bottleneck
    dir, and the evaluation loads SFT and DPO side by side on one base and tells them apart."""
    res, _, _ = trained
    cfg = DPOConfig(batch_size=2, max_length=64, learning_rate=2e-2, max_steps=2, bf16="false", mine_mistakes=False)
    dpo = train_dpo(tiny_ref, res.adapter_dir, "bottleneck", HELD_OUT, PREFS, cfg, tmp_path / "dpo", max_new_tokens=2)
    assert dpo.metrics["steps"] == 2 and is_adapter_dir(tmp_path / "dpo")
    with torch.no_grad():
        a = load_adapter(load_model(tiny_ref), res.adapter_dir).eval()(IDS).logits
        b = load_adapter(load_model(tiny_ref), tmp_path / "dpo").eval()(IDS).logits
    assert not torch.allclose(a, b), "DPO changed nothing"
    # Both on one base, one row each through sft, dpo and the bare base (PEFT's mixed batch, as evaluate runs it).
    both = load_adapter(load_adapter(load_model(tiny_ref), res.adapter_dir, adapter_name="sft"), tmp_path / "dpo",
                        adapter_name="dpo").eval()
    with torch.no_grad():
        mixed = both(IDS.repeat(3, 1), adapter_names=["sft", "dpo", "__base__"]).logits
        plain = load_model(tiny_ref).eval()(IDS).logits
    for row, expected in enumerate((a, b, plain)):
        torch.testing.assert_close(mixed[row:row + 1], expected, rtol=1e-5, atol=1e-5)

    ecfg = EvaluateConfig(mmlu=None, gsm8k=None, perplexity=None, batch_size=2, bootstrap_resamples=100)
    rep = evaluate(tiny_ref, {"sft": res.adapter_dir, "dpo": str(tmp_path / "dpo")}, "bottleneck", HELD_OUT[:2],
                   ecfg, max_new_tokens=2)
    assert rep.task["sft"].n == rep.task["dpo"].n == 2 and rep.final == "dpo"
