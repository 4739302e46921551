"""The memory planner: exact parameter counts from the config alone (Llama, Gemma 3, Qwen2, Mistral,
Mixtral and Qwen2-MoE, each from a small config, checked against the real model and PEFT), the auto choice,
the CLI and step report. The estimate against measured training memory is in
tests/integration/test_plan_measured.py.
"""

import json

import pytest
import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

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


SMOL = shape_from_config(LlamaConfig(  # SmolLM2-135M's shape
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, tie_word_embeddings=True))

# Small configs of each architecture family (seconds to build for real); `mlp` is the feed-forward width a
# token passes through: dense width, or routed experts x expert width + the shared expert.
SMALL = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
ARCHITECTURES = {
    "gemma3_text": (dict(intermediate_size=96, head_dim=32, num_key_value_heads=1), 96),  # q/k norms, 4 norms
    "qwen2": (dict(intermediate_size=96, tie_word_embeddings=False), 96),  # q/k/v biases, untied head
    "mistral": (dict(intermediate_size=96, sliding_window=16), 96),
    "mixtral": (dict(intermediate_size=40, num_local_experts=4, num_experts_per_tok=2), 2 * 40),
    "qwen2_moe": (dict(intermediate_size=96, moe_intermediate_size=24, shared_expert_intermediate_size=48,
                       num_experts=4, num_experts_per_tok=2), 2 * 24 + 48),
}


def _config(model_type):
    return AutoConfig.for_model(model_type, **{**SMALL, **ARCHITECTURES[model_type][0]})


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_architecture_is_counted_exactly_from_its_config(model_type):
    cfg = _config(model_type)
    shape = shape_from_config(cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)  # the real model, on CPU
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape_from_config(cfg.to_dict()).params == shape.params
    assert shape.mlp_width == ARCHITECTURES[model_type][1] and shape.layers == 3
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert (experts > 0) == ("num_experts_per_tok" in ARCHITECTURES[model_type][0])
    assert shape.active_params == shape.params - experts // 2  # 2 of 4 experts per token
    assert shape.tied == (model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    for sft in (SFTConfig(r=4), SFTConfig(r=4, target_modules="attention", top_layers=1)):
        peft_model = get_peft_model(AutoModelForCausalLM.from_config(cfg), lora_config(sft, shape.layers))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert lora_params(shape, sft.r, sft.target_modules, sft.top_layers) == trainable, sft


def test_moe_memory_counts_every_expert_and_compute_only_the_routed_ones():
    shape = shape_from_config(_config("mixtral"))
    full = estimate(shape, "full", Workload())
    assert full.parts["weights"] == 4 * shape.params and full.trainable_params == shape.params
    assert full.flops_per_token == 6 * shape.active_params < 6 * shape.params
    qlora = estimate(shape, "qlora", Workload())  # bitsandbytes packs nn.Linear only: fused experts stay fp32
    assert qlora.parts["weights"] > 4 * (shape.params - shape.linear_params)


def test_gemma3_270m_shape_matches_the_real_model():
    """google/gemma-3-270m's config (as its GGUF converts): 268,098,176 parameters, counted on the real model."""
    cfg = AutoConfig.for_model("gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
                               num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256)
    shape = shape_from_config(cfg)
    assert shape.params == 268_098_176 and shape.embedding_params == 262144 * 640 and shape.tied
    lora = estimate(shape, "lora", Workload(batch_size=4, seq_len=256))
    assert lora.parts["logits"] == 4 * 256 * 262144 * 12  # the 262k vocabulary dominates


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
