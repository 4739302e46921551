"""Every `sft.method` on the tiny model: the loss falls, frozen weights stay bit-identical, the saved
artifact reloads to the same logits, merge / evaluate / DPO take it or refuse it clearly.

    .venv/bin/pytest -q tests/integration/test_methods.py

One fixed batch of two rows, a constant learning rate far above a real run's (the tiny random model
needs it) and three steps keep each method to seconds on CPU. Each method trains once per session.
"""

import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import tuneline.train.sft as sft
from tuneline.config import BaseModelConfig, DPOConfig, EvaluateConfig, PerplexityConfig, SFTConfig, TunelineConfig
from tuneline.eval.evaluate import evaluate
from tuneline.export.merge import merge
from tuneline.model.adapters import is_adapter_dir, load_adapter, load_full
from tuneline.model.base import load_model, prepare
from tuneline.train.checkpoints import checkpoint_dir, last_checkpoint
from tuneline.train.dpo import copy_to_ref_adapter
from tuneline.train.dpo import train as train_dpo
from tuneline.train.methods import METHODS, method_for

IDS = torch.tensor([[1, 20, 30, 40, 50, 60]])


def _record(i: int, text: str, label: str) -> dict:
    prompt = [{"role": "system", "content": ""}, {"role": "user", "content": f"Classify the banking intent: {text}"}]
    return {"id": f"r{i}", "prompt": prompt, "assistant": label}


# Task rows as tuneline.data.validate.validate makes them (built here: validating the tiny config's data takes ~30 s).
ROWS = [_record(0, "I lost my card yesterday", "lost_or_stolen_card"),
        _record(1, "How do I top up by bank transfer?", "top_up_by_bank_transfer")]
HELD_OUT = [_record(2, "My card payment was declined", "declined_card_payment"),
            _record(3, "What is the exchange rate?", "exchange_rate"),
            _record(4, "Where is my new card?", "card_arrival"),
            _record(5, "Cancel my transfer please", "cancel_transfer")]
PREFS = [{"id": f"p{i}", "prompt": json.dumps([{"role": "user", "content": q}]), "chosen": c, "rejected": r}
         for i, (q, c, r) in enumerate([("Say hi", "Hi!", "No."), ("Name a colour", "Blue.", "Seven.")])]
# Per-method learning rate for 4 steps on one batch of the random tiny model.
LR = {"lora": 5e-3, "qlora": 5e-3, "dora": 5e-3, "rslora": 5e-3, "adalora": 2e-2, "ia3": 5e-2, "prefix_tuning": 5e-2,
      "prompt_tuning": 5e-2, "xlora": 5e-2, "full": 1e-3, "bitfit": 2e-2, "galore": 1e-3}
ADAPTERS = ["lora", "qlora", "dora", "rslora", "adalora", "ia3", "prefix_tuning", "prompt_tuning", "xlora"]
FULL = ["full", "bitfit", "galore"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matmuls gain nothing from a second thread; on a busy 2-core machine the spinning
    thread pool made each training run ~4x slower (measured: 10.5 s vs 2.6 s for one rslora run)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import tuneline.train.checkpoints as training

    mp = pytest.MonkeyPatch()
    mp.setattr(training, "CHECKPOINT_ROOT", tmp_path_factory.mktemp("ckpt"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def biased_ref(tiny_ref, tmp_path_factory):
    """The tiny model with attention and MLP biases (Llama has none by default): bitfit's test model."""
    from transformers import AutoTokenizer

    base = load_model(tiny_ref)
    config = base.config
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("biased")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_ref.path).save_pretrained(out)
    return prepare(BaseModelConfig(source=str(out)))


@pytest.fixture(scope="module")
def experts(tiny_ref, tmp_path_factory):
    """Two LoRA experts for xlora (random non-zero B, so each one changes the model)."""
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        model = get_peft_model(load_model(tiny_ref), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        paths.append(str(tmp_path_factory.mktemp(f"expert{i}")))
        model.save_pretrained(paths[-1])
    return paths


def method_cfg(method: str, experts: list[str] = (), **kw) -> SFTConfig:
    extra = {"padding_free": False} if method in ("prefix_tuning", "prompt_tuning") else {}
    if method == "xlora":
        extra["xlora_experts"] = list(experts)
    return SFTConfig(method=method, max_steps=3, batch_size=2, learning_rate=LR[method], lr_scheduler="constant",
                     warmup_ratio=0.0, logging_steps=1, bf16="false", r=8, alpha=16, **extra, **kw)


@pytest.fixture(scope="module")
def trained(tiny_ref, biased_ref, experts, ckpts, tmp_path_factory):
    """method -> (ref, result, the in-memory trained model, base weights before training). Trains on first use."""
    cache = {}

    def get(method):
        if method not in cache:
            ref = biased_ref if method == "bitfit" else tiny_ref
            before = {k: v.clone() for k, v in load_model(ref, quantize_4bit=method == "qlora").state_dict().items()}
            captured = {}
            record = METHODS[method]

            def grab(model, out):
                captured["model"] = model
                record.save(model, out)

            with pytest.MonkeyPatch.context() as mp:
                mp.setitem(METHODS, method, dataclasses.replace(record, save=grab))
                res = sft.train(ref, ROWS, method_cfg(method, experts), tmp_path_factory.mktemp(method))
            cache[method] = (ref, res, captured["model"], before)
        return cache[method]

    return get


def _reload(ref, out, method):
    if not is_adapter_dir(out):
        return load_full(out)
    return load_adapter(load_model(ref, quantize_4bit=method == "qlora"), out)


@pytest.mark.parametrize("method", ADAPTERS + FULL)
def test_method_learns_keeps_frozen_weights_and_reloads(method, trained):
    ref, res, model, before = trained(method)
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert res.metrics["steps"] == 3 and losses[-1] < losses[0], losses
    assert res.metrics["train_tokens"] > 0 and 0 < res.metrics["trainable_params"] <= res.metrics["total_params"]

    # Frozen weights: compared before any eval forward (a 4-bit eval forward repacks weights in place).
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    frozen = trainable = 0
    for name, p in base.state_dict(keep_vars=True).items():
        key = name.replace(".base_layer", "")
        if key not in before:
            continue  # adapter weights
        if p.requires_grad:
            trainable += 1
        else:
            frozen += 1
            assert torch.equal(p.detach(), before[key]), f"{method}: frozen {name} changed"
    if method in ADAPTERS:
        assert trainable == 0 and frozen > 0, "an adapter method left base weights trainable"
    elif method == "bitfit":
        assert frozen > 0 and {k for k, p in base.named_parameters() if p.requires_grad} == \
            {k for k in before if k.endswith(".bias")}
    else:
        assert frozen == 0
    changed = [k for k, v in base.state_dict().items() if k.replace(".base_layer", "") in before
               and not torch.equal(v, before[k.replace(".base_layer", "")])]
    assert (changed == []) == (method in ADAPTERS), changed[:5]

    # The saved artifact reloads to the same logits; adapters stay small, full-weight methods are model dirs.
    out = res.adapter_dir
    assert is_adapter_dir(out) == (method in ADAPTERS)
    reloaded = _reload(ref, out, method).eval()
    if method != "adalora":  # AdaLoRA saves only the ranks it kept, so its reloaded tensors are smaller
        again_sd, prefix = reloaded.state_dict(), "base_model.model."
        for k, v in model.state_dict().items():
            if k.removeprefix(prefix).replace(".base_layer", "") not in before or method in FULL:
                assert torch.equal(again_sd[k].float(), v.float()), f"{method}: {k} differs after reload"
    with torch.no_grad():
        expected = model.eval()(IDS).logits
        again = reloaded(IDS).logits
        plain = load_model(ref, quantize_4bit=method == "qlora").eval()(IDS).logits
    # TRL keeps QLoRA adapter weights in bf16 and PEFT loads them back as fp32: equal values, the LoRA
    # path then computes in fp32, so the logits agree to bf16 rounding only.
    tol = 5e-3 if method == "qlora" else 1e-5
    torch.testing.assert_close(again, expected, rtol=tol, atol=tol)
    if method == "prompt_tuning":  # PEFT returns logits for the virtual tokens too
        again = again[:, -IDS.shape[1]:]
    assert not torch.allclose(again, plain), "training changed nothing"


@pytest.mark.parametrize("method", [m for m in ADAPTERS + FULL if m != "qlora"])
def test_merge_folds_in_or_refuses(method, trained, tmp_path):
    ref, res, _, _ = trained(method)
    if not method_for(method).mergeable:
        with pytest.raises(ValueError, match=f"a {method} adapter cannot be merged"):
            merge(ref, res.adapter_dir, tmp_path / "merged", dtype="float32")
        return
    merge(ref, res.adapter_dir, tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.use_cache and not is_adapter_dir(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, _reload(ref, res.adapter_dir, method).eval()(IDS).logits,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ia3", "prefix_tuning", "prompt_tuning", "xlora", "galore"])
def test_evaluate_scores_every_kind_of_artifact(method, trained):
    """Task accuracy (generation) and perplexity (logits lined up with the input) for the base and the candidate."""
    ref, res, _, _ = trained(method)
    records = HELD_OUT[:2]
    cfg = EvaluateConfig(mmlu=None, gsm8k=None, perplexity=PerplexityConfig(rows=2, batch_size=2),
                         batch_size=2, bootstrap_resamples=100)
    rep = evaluate(ref, {"sft": res.adapter_dir}, method, records, cfg, max_new_tokens=2)
    assert rep.task["sft"].n == 2 and rep.final == "sft"
    assert rep.perplexity["sft"].ppl != rep.perplexity["base"].ppl


@pytest.mark.parametrize("method", ["ia3", "full"])
def test_dpo_continues_from_a_non_lora_sft_result(method, trained, tmp_path):
    ref, res, _, _ = trained(method)
    cfg = DPOConfig(batch_size=2, max_length=64, learning_rate=1e-2, max_steps=2, bf16="false")
    dpo = train_dpo(ref, res.adapter_dir, method, HELD_OUT, PREFS, cfg, tmp_path / "dpo", max_new_tokens=2)
    assert is_adapter_dir(tmp_path / "dpo") == (method in ADAPTERS) and dpo.metrics["steps"] == 2
    with torch.no_grad():
        a = _reload(ref, res.adapter_dir, method).eval()(IDS).logits
        b = _reload(ref, tmp_path / "dpo", method).eval()(IDS).logits
    assert not torch.allclose(a, b), "DPO changed nothing"


def test_dpo_reference_is_the_sft_adapter_for_parameterdict_adapters(trained):
    """TRL 1.16 copies "default" to "ref" only for names containing ".default."; IA3 and AdaLoRA keep
    theirs in ParameterDicts (names end in ".default"), so without copy_to_ref_adapter the reference
    would be the untrained adapter, i.e. the base model."""
    ref, res, _, _ = trained("ia3")
    model = load_adapter(load_model(ref), res.adapter_dir, trainable=True)
    model.add_adapter("ref", model.peft_config["default"])  # what DPOTrainer does
    params = dict(model.named_parameters())
    pairs = [(n, n.removesuffix(".default") + ".ref") for n in params if n.endswith(".default")]
    assert pairs and not all(torch.equal(params[a], params[b]) for a, b in pairs)
    copy_to_ref_adapter(model)
    assert all(torch.equal(params[a], params[b]) for a, b in pairs)


def test_galore_rerun_resumes_its_optimizer_state(trained, tmp_path):
    """GaLore's optimizer state holds GaLoreProjector objects, which the Trainer's weights-only load refuses
    unless allow-listed."""
    ref, first, _, _ = trained("galore")
    again = sft.train(ref, ROWS, method_cfg("galore"), tmp_path / "again")
    assert again.metrics["resumed_from"].endswith(f"checkpoint-{first.metrics['steps']}")


@pytest.mark.parametrize("method, resumable", [("adalora", False), ("xlora", False), ("ia3", True)])
def test_checkpoints_only_where_a_rerun_can_resume(method, resumable, trained, experts):
    ref, _, _, _ = trained(method)
    key = sft.checkpoint_key(ref, method_cfg(method, experts), ROWS)
    assert (last_checkpoint(checkpoint_dir("sft", key)) is not None) == resumable


def test_bitfit_refuses_a_model_without_biases(tiny_ref):
    with pytest.raises(ValueError, match="bitfit trains only bias terms"):
        method_for("bitfit").set_trainable(load_model(tiny_ref))


def _peft_config(cfg: SFTConfig, num_layers: int, total_steps: int | None = None):
    return method_for(cfg).peft_config(cfg, num_layers, None, total_steps)


def test_presets_and_explicit_target_modules():
    cfg = _peft_config(SFTConfig(method="dora", target_modules="attention"), num_layers=2)
    assert cfg.use_dora and set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    cfg = _peft_config(SFTConfig(method="rslora", target_modules=["q_proj", "v_proj"], r=4, alpha=8), num_layers=2)
    assert cfg.use_rslora and set(cfg.target_modules) == {"q_proj", "v_proj"} and (cfg.r, cfg.lora_alpha) == (4, 8)
    ia3 = _peft_config(SFTConfig(method="ia3"), num_layers=2)
    assert "gate_proj" in ia3.target_modules and ia3.feedforward_modules == {"down_proj"}
    ada = _peft_config(SFTConfig(method="adalora", r=8, top_layers=1), num_layers=4, total_steps=20)
    assert (ada.target_r, ada.init_r, ada.total_step, ada.layers_to_transform) == (8, 12, 20, [3])
    assert ada.tinit < ada.total_step - ada.tfinal


@pytest.mark.parametrize("bad, message", [
    ({"method": "prompt_tuning"}, "padding_free: false"),
    ({"method": "prefix_tuning"}, "padding_free: false"),
    ({"method": "ia3", "top_layers": 2}, "top_layers works for the LoRA family"),
    ({"method": "xlora", "xlora_experts": ["a"]}, "at least two adapter dirs"),
    ({"method": "lora", "xlora_experts": ["a", "b"]}, "only used by method xlora"),
    ({"method": "prefix_tuning", "padding_free": False, "gradient_checkpointing": True}, "gradient checkpointing"),
    ({"method": "xlora", "xlora_experts": ["a", "b"], "gradient_checkpointing": True}, "gradient checkpointing"),
])
def test_sft_config_rejects_combinations_that_cannot_work(bad, message):
    with pytest.raises(ValidationError, match=message):
        SFTConfig(**bad)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "xlora", "adalora"])
def test_dpo_after_methods_it_cannot_continue_is_refused_at_load_time(method):
    sft_cfg = {"method": method, "padding_free": method not in ("prompt_tuning", "prefix_tuning"),
               "xlora_experts": ["a", "b"] if method == "xlora" else []}
    with pytest.raises(ValidationError, match=f"dpo.enabled needs .* {method} is not one"):
        TunelineConfig(sft=sft_cfg)
    assert TunelineConfig(sft=sft_cfg, dpo={"enabled": False}).sft.method == method
