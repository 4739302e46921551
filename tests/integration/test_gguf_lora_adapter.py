"""GGUF LoRA adapters on the tiny model: base GGUF + adapter GGUF in llama.cpp answers like the merged GGUF.

    .venv/bin/pytest -q tests/integration/test_gguf_lora_adapter.py

Adapters are made with PEFT directly (random A and B, so they change the answers), merged by tuneline's merge,
converted by llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py), all in f32 so the two
paths differ only by float summation order.
"""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pydantic import ValidationError

from tuneline.config import ExportConfig, MergeConfig, TunelineConfig
from tuneline.export import gguf
from tuneline.export.gguf_lora import ExportError, convertible, export_for_run
from tuneline.export.merge import merge
from tuneline.model.base import load_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONVERSATIONS = [[{"role": "user", "content": f"Classify the banking intent: {t}"}] for t in (
    "my card is lost", "top up failed", "how do I change my PIN", "a refund has not arrived",
    "why was I charged twice", "can I get a virtual card")]


def _adapter(ref, path, seed: int, **lora) -> str:
    torch.manual_seed(seed)
    model = get_peft_model(load_model(ref), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                       init_lora_weights=False, **lora))
    with torch.no_grad():  # large enough deltas that the greedy answers change
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(4.0)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def exported(tiny_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    a, b = _adapter(tiny_ref, d / "a", seed=1, use_rslora=True), _adapter(tiny_ref, d / "b", seed=2)
    cfg = MergeConfig(combination="linear", adapters=[b], weights=[1.0, -0.5])  # negation survives the trip too
    merged = merge(tiny_ref, a, d / "merged", "float32", combination=cfg)
    merged_gguf = gguf.convert(merged, d / "out" / "model-F32.gguf", "f32")
    rows = [{"prompt": json.dumps(c), "assistant": "x", "shape": "chat"} for c in CONVERSATIONS]
    # As the export_gguf step calls it with export.lora_adapters: the type of the converted file (gguf_types[0]).
    res = export_for_run(tiny_ref.path, str(merged), a, cfg, d / "out", rows, ExportConfig(gguf_types=["f32"]), 8,
                         merged_gguf)
    return res, d / "out"


def test_base_plus_adapters_answers_like_the_merged_model(exported):
    res, _ = exported
    assert res.rows == len(CONVERSATIONS)
    assert res.agreement == 1.0, res.differing
    assert res.base_agreement < 1.0  # the adapters change the answers: the agreement is not trivial


def test_files_and_modelfiles_sit_beside_the_base(exported):
    res, out = exported
    assert (out / res.base).is_file() and [a.weight for a in res.adapters] == [1.0, -0.5]
    for a in res.adapters:
        assert (out / a.path).is_file() and a.size_bytes < (out / res.base).stat().st_size / 2
        text = (out / a.modelfile).read_text().splitlines()
        assert text[:2] == [f"FROM ./{res.base}", f"ADAPTER ./{a.path}"]
        assert any(line.startswith("TEMPLATE") for line in text)
    assert json.loads((out / "lora_adapters.json").read_text())["agreement"] == 1.0


def test_dora_is_refused_with_the_reason(tiny_ref, tmp_path):
    dora = _adapter(tiny_ref, tmp_path / "dora", seed=3, use_dora=True)
    with pytest.raises(ExportError, match="DoRA's magnitude vector"):
        convertible(dora)
    with pytest.raises(ValidationError, match="sft.method dora is not plain LoRA"):  # at config load, before training
        TunelineConfig(export={"lora_adapters": True}, sft={"method": "dora"})
