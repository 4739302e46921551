"""GPTQ and AWQ 4-bit exports (GPTQModel on CPU) of a tiny random Llama, loaded back by transformers.

    .venv/bin/pytest -q tests/integration/test_quantize.py      # ~1 min on 2 cores; needs the `quant` extra

No skip: CI installs the extra (gptqmodel, optimum). The tiny model is hidden 128 / intermediate 256,
so every quantized Linear's input width is a multiple of the group size (64).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from tuneline.config import BaseModelConfig, TinyModel  # noqa: E402
from tuneline.export import quantize as q  # noqa: E402
from tuneline.model.base import prepare, sha256_file  # noqa: E402

CFG = q.QuantizeConfig(group_size=64, calibration_rows=16, calibration_max_tokens=64)
PROMPT = [{"role": "system", "content": ""},
          {"role": "user", "content": "Classify the banking intent: my card is lost"}]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    tiny = TinyModel(layers=2, hidden=128, heads=4, intermediate=256)
    return Path(prepare(BaseModelConfig(source="tiny", tiny=tiny)).path)


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def texts(tiny_data, tok) -> list[str]:
    train = tiny_data.task[tiny_data.task.split == "train"].to_dict("records")
    return q.calibration_texts(train, CFG.calibration_rows, CFG.seed, tok)


@pytest.fixture(scope="module")
def exports(model_dir, texts, tmp_path_factory) -> dict[str, q.QuantExport]:
    out = tmp_path_factory.mktemp("quant")
    return {m: q.quantize(model_dir, out / f"tiny-{m}", m, CFG, texts) for m in ("gptq", "awq")}


@pytest.fixture(scope="module")
def fp_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _hidden(model, ids) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return [h[0].float() for h in out.hidden_states] + [out.logits[0].float()]


# --- calibration ------------------------------------------------------------------------------------


def test_calibration_texts_render_training_rows(tiny_data, tok, texts):
    assert len(texts) == CFG.calibration_rows
    assert all(t.startswith("<|im_start|>system\n<|im_end|>") and "<|im_start|>assistant\n" in t for t in texts)
    train = tiny_data.task[tiny_data.task.split == "train"]
    assert all(any(a in t for a in train.assistant) for t in texts)  # the gold answer is in the sample
    rows = train.to_dict("records")
    assert q.calibration_texts(rows, 16, 0, tok) == texts  # seeded
    assert q.calibration_texts(rows, 16, 1, tok) != texts
    assert len(q.calibration_texts(rows, 10_000, 0, tok)) == len(rows)  # never more than there are


def test_calibration_plain_records(tok):
    recs = [{"system": None, "user": "hi", "assistant": "hello"}, {"system": "", "user": "a", "assistant": "b"}]
    a, b = sorted(q.calibration_texts(recs, 2, 0, tok), key=len, reverse=True)
    assert "You are a helpful AI assistant" in a and a.endswith("<|im_start|>assistant\nhello<|im_end|>\n")
    assert b.startswith("<|im_start|>system\n<|im_end|>")
    with pytest.raises(q.QuantError, match="no calibration records"):
        q.calibration_texts([], 4, 0, tok)


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ["gptq", "exl2"]}, "literal_error"),
        ({"methods": ["awq", "awq"]}, "repeats a method"),
        ({"bits": 8}, "Input should be 4"),
        ({"group_size": 100}, "Input should be 32, 64, 128 or 256"),
        ({"calibration_rows": 1}, "greater than or equal to 2"),
        ({"calibration_tokens": 64}, "did you mean .calibration_max_tokens."),
    ],
)
def test_bad_config_fails_at_load(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        q.QuantizeConfig(**kwargs)


def test_group_size_must_divide_the_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 576, "intermediate_size": 1536,
                                                      "num_attention_heads": 9, "head_dim": 64}))
    with pytest.raises(q.QuantError, match="hidden_size 576.*group_size 128; set quantize.group_size to 64"):
        q.check_group_size(tmp_path, 128)
    q.check_group_size(tmp_path, 64)


def test_bad_inputs_fail_before_quantizing(tmp_path, model_dir, texts):
    with pytest.raises(q.QuantError, match="unknown method 'exl2'"):
        q.quantize(model_dir, tmp_path / "x", "exl2", CFG, texts)
    with pytest.raises(q.QuantError, match="no config.json"):
        q.quantize(tmp_path, tmp_path / "x", "gptq", CFG, texts)
    with pytest.raises(q.QuantError, match="calibration samples of 10\\+ tokens"):
        q.quantize(model_dir, tmp_path / "x", "gptq", CFG, ["hi", "there"])
    with pytest.raises(q.QuantError, match="not a quantized export"):
        q.load_quantized(tmp_path)
    with pytest.raises(q.QuantError, match="no GPTQ/AWQ quantization_config"):
        q.load_quantized(model_dir)
    assert not (tmp_path / "x").exists()


def test_killed_run_leaves_no_export(tmp_path, model_dir, texts, monkeypatch):
    import gptqmodel

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gptqmodel.GPTQModel, "load", boom)
    with pytest.raises(KeyboardInterrupt):
        q.quantize(model_dir, tmp_path / "out", "gptq", CFG, texts)
    assert list(tmp_path.iterdir()) == []


def test_missing_backend_says_what_to_install(monkeypatch, model_dir, tmp_path, texts):
    monkeypatch.setattr(q, "versions", lambda: {"gptqmodel": None, "transformers": "x", "torch": "x", "optimum": None})
    with pytest.raises(q.QuantError, match=r"gptqmodel not installed: run pip install -e '\.\[quant\]'"):
        q.quantize(model_dir, tmp_path / "x", "gptq", CFG, texts)


# --- exports ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_export_loads_in_transformers_and_generates(exports, method, tok):
    from transformers import AutoModelForCausalLM

    path = Path(exports[method].path)
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")  # plain transformers, no tuneline
    assert model.config.quantization_config.quant_method == method
    assert type(model.model.layers[0].self_attn.q_proj).__module__.startswith("gptqmodel.nn_modules.qlinear")
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantized_close_to_fp_but_not_equal(exports, method, model_dir, fp_model, tok):
    """Each decoder layer's contribution to the residual stream (h[i+1] - h[i]) points the way it does in
    the fp model. Measured: 0.98-0.99 (GPTQ and AWQ); with shuffled weight rows 0.06-0.28, with zeroed
    output projections 0.0-0.45. Logits alone would be a weak check: the embedding dominates them."""
    from transformers import AutoModelForCausalLM

    model, _ = q.load_quantized(exports[method].path)
    ids = tok(" ".join(["my card payment was declined at the shop yesterday"] * 3), return_tensors="pt").input_ids
    hq, hf = _hidden(model, ids), _hidden(fp_model, ids)
    for i in range(len(hf) - 2):  # hidden states: embeddings, then one per decoder layer; then logits
        cos = torch.nn.functional.cosine_similarity(hq[i + 1] - hq[i], hf[i + 1] - hf[i], dim=-1).mean()
        assert cos > 0.95, (i, cos)
    assert torch.nn.functional.cosine_similarity(hq[-1], hf[-1], dim=-1).mean() > 0.95  # measured 0.98
    assert (hq[-1].argmax(-1) == hf[-1].argmax(-1)).float().mean() > 0.9  # measured 0.96-1.0
    # Quantized, not a copy of the fp weights: further from fp32 than the bf16 cast the export computes in.
    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    hb = _hidden(bf16, ids)
    assert (hq[-2] - hf[-2]).norm() > 5 * (hb[-2] - hf[-2]).norm()  # measured ~30x


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_export_metadata_and_files(exports, method, model_dir):
    res = exports[method]
    path = Path(res.path)
    assert (res.method, res.bits, res.group_size) == (method, 4, 64)
    files = [f for f in path.rglob("*") if f.is_file()]
    assert res.size_bytes == sum(f.stat().st_size for f in files)
    assert res.weight_files == {"model.safetensors": sha256_file(path / "model.safetensors")}
    assert res.sha256 == res.weight_files["model.safetensors"]
    assert 0 < res.weights_bytes < sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    assert set(res.versions) == {"gptqmodel", "transformers", "torch", "optimum"} and all(res.versions.values())
    assert res.versions["gptqmodel"] == "7.6.0"
    assert res.seconds > 0 and res.calibration_samples == CFG.calibration_rows and res.calibration_tokens > 0
    assert q.QuantExport.model_validate_json((path / q.META_FILE).read_text()) == res
    cfg = json.loads((path / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"]) == (method, 4, 64)
    assert qc["sym"] is False if method == "gptq" else qc["zero_point"] is True  # asymmetric by default
    assert qc["meta"]["offload_to_disk_path"] is None and "/tmp" not in json.dumps(cfg)  # no machine paths
    # GPTQModel writes do_sample: true; the merged model's generation config is what ships.
    assert (path / "generation_config.json").read_text() == (model_dir / "generation_config.json").read_text()
    assert (path / "chat_template.jinja").read_text() == (model_dir / "chat_template.jinja").read_text()
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]


# --- the export gate --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit, asked", [(0.0, False), (1e6, True)])
def test_perplexity_is_checked_first_and_a_rejected_file_is_not_asked_the_rows(tiny_cfg, tiny_data, model_dir,
                                                                                tmp_path, limit, asked):
    """As for GGUF files: the cheaper perplexity check runs first, and a file it rejects is not asked the task
    rows (no answers, no score: the reports say "not asked"); a file it passes is asked all of them."""
    from tuneline.export.gate import ExportChecks

    export = tiny_cfg.export.model_copy(update={"max_perplexity_increase": {"default": limit}, "check_rows": 4})
    checks = ExportChecks.of(tiny_cfg.evaluate, export).with_length(8)
    train = tiny_data.task[tiny_data.task.split == "train"].to_dict("records")
    held = tiny_data.task[tiny_data.task.split == "eval"].to_dict("records")
    result, _ = q.export_quantized(str(model_dir), tmp_path / "gptq", "gptq", train, held, CFG, export, checks)
    (entry,) = result.files
    assert entry.perplexity is not None and entry.asked is asked and entry.passed is asked
    assert len(entry.samples) == (4 if asked else 0) and ("task rows not asked" in entry.reason) is not asked
    assert (0 < entry.ask_seconds < entry.seconds) if asked else entry.ask_seconds == 0
    # GPTQModel's workers are gone (alive, they slowed llama.cpp's decoding in the process 3x); the second
    # parametrization quantizes again in this process, on the pool GPTQModel rebuilds.
    import gptqmodel

    assert gptqmodel._DEVICE_THREAD_POOL is None
    assert not [t.name for t in threading.enumerate() if t.name.startswith("DPWorker-model_loader")], \
        "the pool's own workers (GPTQModel keeps one more, outside the pool)"
