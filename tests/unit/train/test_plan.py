"""The memory planner: exact parameter counts from the config alone, the auto choice, the CLI and
step report. The estimate against measured training memory is in tests/integration/test_plan_measured.py.
"""

import json

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tuneline.config import SFTConfig
from tuneline.paths import PROJECT_ROOT
from tuneline.train.methods import lora_config
from tuneline.train.plan import (
    Estimate,
    ModelShape,
    Workload,
    choose_method,
    estimate,
    lora_params,
    plan,
    plan_report,
    resolve_method,
    shape_from_config,
    shape_from_dir,
    workload_from,
)


def _meta_model(**kw):
    cfg = LlamaConfig(**kw)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg), cfg


@pytest.mark.parametrize("kw", [
    dict(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=3, num_attention_heads=8,
         num_key_value_heads=2, tie_word_embeddings=False),  # grouped-query attention, untied lm_head
    dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
         num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),  # SmolLM2-135M's shape
])
def test_parameter_count_from_the_config_is_exact(kw):
    model, cfg = _meta_model(**kw)
    assert shape_from_config(cfg).params == sum(p.numel() for p in model.parameters())
    assert shape_from_config(cfg.to_dict()).params == shape_from_config(cfg).params


def test_tiny_model_dir_shape_and_lora_count_match_peft(tiny_ref):
    from tuneline.model.base import load_model

    shape = shape_from_dir(tiny_ref.path)
    model = load_model(tiny_ref)
    assert shape.params == sum(p.numel() for p in model.parameters())
    for sft in (SFTConfig(), SFTConfig(target_modules="attention", r=4), SFTConfig(top_layers=1, r=8)):
        peft_model = get_peft_model(load_model(tiny_ref), lora_config(sft, shape.layers))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert lora_params(shape, sft.r, sft.target_modules, sft.top_layers) == trainable, sft


SMOL = ModelShape(vocab=49152, hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, head_dim=64)


def test_estimate_parts_follow_the_formulas():
    w = Workload(batch_size=8, seq_len=96, r=16)
    full, lora, qlora = (estimate(SMOL, m, w) for m in ("full", "lora", "qlora"))
    p = SMOL.params
    assert full.parts["weights"] == full.parts["gradients"] == 4 * p and full.parts["optimizer"] == 8 * p
    assert lora.parts["weights"] == 4 * (p + lora.trainable_params) and lora.parts["optimizer"] == 8 * lora.trainable_params
    assert qlora.parts["weights"] < 0.35 * lora.parts["weights"]  # block linears at ~0.52 bytes
    assert qlora.total < lora.total < full.total
    ckpt = estimate(SMOL, "lora", w.model_copy(update={"gradient_checkpointing": True}))
    assert ckpt.parts["activations"] < lora.parts["activations"] / 5 and ckpt.relative_time > lora.relative_time
    fp32 = estimate(SMOL, "lora", w.model_copy(update={"bf16": False}))
    assert fp32.parts["autocast_copies"] == 0 and fp32.parts["activations"] > lora.parts["activations"]
    doubled = estimate(SMOL, "lora", w.model_copy(update={"batch_size": 16}))
    assert doubled.parts["activations"] == 2 * lora.parts["activations"]


def _est(method, gb, gc=False, rel=None):
    from tuneline.train.plan import GB, relative_time

    return Estimate(method=method, gradient_checkpointing=gc, trainable_params=1, parts={"all": gb * GB},
                    relative_time=rel or relative_time(method, gc))


def test_choose_method_takes_the_fastest_that_fits():
    ests = [_est("full", 30), _est("lora", 20), _est("lora", 12, gc=True), _est("qlora", 10),
            _est("qlora", 5, gc=True)]
    assert choose_method(ests, 80).method == "lora"
    c = choose_method(ests, 16)  # lora 20 is too big; qlora (1.4x) before lora + checkpointing (1.5x)
    assert (c.method, c.gradient_checkpointing) == ("qlora", False) and "lora 20.00 GB" in c.reason
    c = choose_method(ests, 8)
    assert (c.method, c.gradient_checkpointing) == ("qlora", True)
    with pytest.raises(ValueError, match="no method fits.*qlora \\+ gradient checkpointing at 5.00 GB"):
        choose_method(ests, 4)
    assert choose_method(ests, 80, preference=("full", "lora")).method == "lora"  # full is slower
    assert choose_method(ests, 80, preference=("full",)).method == "full"


def test_auto_resolves_to_a_method_and_others_stay(tiny_ref):
    shape = shape_from_dir(tiny_ref.path)
    auto = SFTConfig(method="auto", bf16="true")
    chosen, why = resolve_method(shape, auto, 96, available_gb=80)
    assert chosen.method == "lora" and "lora" in why and "80.0 GB" in why
    small, _ = resolve_method(SMOL, auto, 96, available_gb=1.7)  # LoRA (1.83 GB) does not fit in 85 % of 1.7 GB
    want = choose_method(plan(SMOL, workload_from(auto, 96, True), ("lora", "qlora")), 1.7)
    assert (small.method, small.gradient_checkpointing) == (want.method, want.gradient_checkpointing)
    assert (small.method, small.gradient_checkpointing) != ("lora", False)
    assert resolve_method(SMOL, SFTConfig(), 96, available_gb=0.1) == (SFTConfig(), None)  # not auto: unchanged


def test_cli_prints_the_table_and_choice(capsys):
    from tuneline.cli import main

    assert main(["plan", str(PROJECT_ROOT / "configs" / "tiny.yaml"), "--gpu-gb", "24"]) == 0
    out = capsys.readouterr().out
    for word in ("method", "est. GB", "fits", "rel. time/cost", "full", "lora + grad ckpt", "qlora",
                 "method: auto -> lora"):
        assert word in out
    assert main(["plan", str(PROJECT_ROOT / "configs" / "tiny.yaml"), "--gpu-gb", "24", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["estimated_gb"]) == 6 and data["auto_method"] == "lora"


def test_step_report_is_html_with_metadata(tiny_ref):
    html, meta = plan_report(tiny_ref, SFTConfig(), 96, gpu_gb=24)
    assert html.startswith("<html>") and "qlora" in html and "auto picks" in html
    assert meta["auto_method"] == "lora" and set(meta["estimated_gb"]) == {r for r in meta["fits"]}
    assert all(v is not None for v in meta.values())  # ZenML metadata takes no None


def test_plan_lists_every_method_with_and_without_checkpointing():
    rows = plan(SMOL, Workload())
    assert [(e.method, e.gradient_checkpointing) for e in rows] == [
        (m, g) for m in ("full", "lora", "qlora") for g in (False, True)]
