"""`base_model.source: some/model.gguf`: the tiny model written to GGUF by llama.cpp's converter comes
back through prepare() as the same model (dequantized once, cached by sha256, the embedded models' path).

    .venv/bin/pytest -q tests/integration/test_gguf_source.py     # ~40 s on 2 cores; needs llama.cpp (make setup)
"""

from pathlib import Path

import pytest
import torch

from tuneline.config import BaseModelConfig
from tuneline.export.gguf import convert
from tuneline.model.base import converted_source, load_model, load_tokenizer, prepare, sha256_file


@pytest.fixture(scope="module")
def gguf_source(tiny_ref, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf-source")
    gguf = convert(tiny_ref.path, tmp / "tiny-f32.gguf", outtype="f32")
    return BaseModelConfig(source=str(gguf), cache_dir=str(tmp / "cache")), gguf


def test_a_gguf_file_is_the_same_model(tiny_ref, gguf_source):
    cfg, gguf = gguf_source
    ref = prepare(cfg)
    assert ref.sha256 == sha256_file(gguf) and Path(ref.path).name == f"tiny-f32-{ref.sha256[:16]}"
    assert (Path(ref.path) / ".complete").exists() and Path(ref.path).parent == Path(cfg.cache_dir)
    ids = load_tokenizer(tiny_ref)("Transfer 20 euros to my savings account", return_tensors="pt").input_ids
    assert load_tokenizer(ref)("Transfer 20 euros to my savings account", return_tensors="pt").input_ids.equal(ids)
    with torch.no_grad():
        want, got = load_model(tiny_ref)(ids).logits, load_model(ref)(ids).logits
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()


def test_converted_once_then_reused(gguf_source):
    cfg, _ = gguf_source
    ref = prepare(cfg)
    weights = Path(ref.path) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert prepare(cfg) == ref and weights.stat().st_mtime_ns == mtime  # the cache, not a second conversion
    # A later step on a machine without the cache rebuilds it (ensure); what it rebuilds is prepare()'s dir.
    assert converted_source(ref.source) and ref.ensure(cfg) == ref
