"""LongLoRA (sft.long_context): S²-Attn equals causal attention with one group, keeps tokens inside their group
(and the half-group-shifted group), trains LoRA + embeddings + norms and saves a full-attention adapter, and
trains 4x past the model's context in less memory than full (materialised) attention.

    .venv/bin/pytest -q -s tests/integration/test_long_context.py     # -s prints the memory figures
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file
from test_methods import IDS, ROWS  # the same rows and ids as every other method

import tuneline.train.sft as sft
from tuneline.config import SFTConfig
from tuneline.model.adapters import load_adapter
from tuneline.model.base import load_model
from tuneline.train import long_context
from tuneline.train.long_context import group_size, shifted_sparse_attention
from tuneline.train.memory import peak_rss_delta
from tuneline.train.methods import METHODS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _qkv(n: int, heads: int = 4, kv_heads: int = 2, d: int = 8):
    torch.manual_seed(0)
    return torch.randn(2, heads, n, d), torch.randn(2, kv_heads, n, d), torch.randn(2, kv_heads, n, d)


def test_one_group_is_full_causal_attention(tiny_ref):
    q, k, v = _qkv(16)
    full = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(shifted_sparse_attention(q, k, v, None, 1.0), full)
    causal = torch.ones(16, 16, dtype=torch.bool).tril()[None, None].expand(2, 1, 16, 16)
    torch.testing.assert_close(shifted_sparse_attention(q, k, v, causal, 1.0), full)

    # Through transformers: the registered "s2attn" in training mode = sdpa, for the whole tiny model.
    ids = torch.randint(0, 1000, (2, 24))
    plain, s2 = load_model(tiny_ref).train(), load_model(tiny_ref).train()
    long_context.enable(s2, group_size_ratio=1.0)
    assert s2.config._attn_implementation == "s2attn"
    with torch.no_grad():
        torch.testing.assert_close(s2(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)


def test_tokens_attend_within_their_group_or_the_half_group_shifted_one():
    """Which values each output depends on (autograd), per head: heads 0-1 groups [0,4) [4,8) ..., heads 2-3
    groups [0,2) [2,6) [6,10) ...; causal inside each; nothing else. A caller's mask gives the same result."""
    n, ratio = 16, 0.25
    g = group_size(n, ratio)
    q, k, v = _qkv(n)
    v.requires_grad_(True)
    out = shifted_sparse_attention(q, k, v, None, ratio)
    seen = torch.zeros(4, n, n, dtype=torch.bool)
    for i in range(n):
        grad, = torch.autograd.grad(out[0, :, i].sum(), v, retain_graph=True)
        seen[:, i] = (grad[0].abs().sum(-1) > 0).repeat_interleave(2, 0)  # kv head -> its 2 query heads
    pos = torch.arange(n)
    causal = pos[None, :] <= pos[:, None]
    plain = (pos[:, None] // g == pos[None, :] // g) & causal
    shifted = ((pos[:, None] + g // 2) // g == (pos[None, :] + g // 2) // g) & causal
    # kv head 0 serves query heads 0-1 (plain groups), kv head 1 serves 2-3 (shifted groups)
    assert g == 4 and torch.equal(seen[0], plain) and torch.equal(seen[2], shifted)
    assert not torch.equal(plain, shifted) and not (plain | shifted)[8, :4].any()  # no path from group 0 to 8
    mask = causal[None, None].expand(2, 1, n, n)
    torch.testing.assert_close(shifted_sparse_attention(q, k, v, mask, ratio), out)


def test_lora_with_long_context_trains_embeddings_and_norms_and_saves_full_attention(tiny_ref, tmp_path, monkeypatch):
    import tuneline.train.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "CHECKPOINT_ROOT", tmp_path / "ckpt")
    calls, captured, record = [], {}, METHODS["lora"]
    real = long_context.shifted_sparse_attention
    monkeypatch.setattr(long_context, "shifted_sparse_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setitem(METHODS, "lora", dataclasses.replace(record, save=lambda m, out: (
        captured.update(model=m), record.save(m, out))))
    cfg = SFTConfig(method="lora", r=4, alpha=8, long_context={"group_size_ratio": 0.25}, max_steps=3, batch_size=2,
                    learning_rate=5e-3, lr_scheduler="constant", warmup_ratio=0.0, logging_steps=1, bf16="false",
                    eval_steps=None)
    res = sft.train(tiny_ref, ROWS, cfg, tmp_path / "out")
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert calls and losses[-1] < losses[0], losses  # S²-Attn ran, and the model learned
    model = captured["model"]
    assert model.config._attn_implementation == "sdpa"  # switched back before saving
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("embed_tokens" in key for key in saved) and any("input_layernorm" in key for key in saved)
    assert any(key.endswith("model.norm.weight") for key in saved) and any("lora_A" in key for key in saved)
    reloaded = load_adapter(load_model(tiny_ref), tmp_path / "out").eval()
    assert reloaded.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, model.eval()(IDS).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValidationError, match="sft.long_context"):
        SFTConfig(method="ia3", long_context={"group_size_ratio": 0.25})


def _train_step_mb(ref, implementation: str, n: int) -> float:
    """Peak RSS above the start (tuneline.train.memory.peak_rss_delta: the kernel's VmHWM, reset at entry) of
    one forward + backward of the decoder layers on n tokens. The LM head is left out: its n x 49152 logits are
    the same for every attention and would hide the difference."""
    model = load_model(ref).train()
    model.config.max_position_embeddings = n // 4  # the context the model declares; training runs 4x past it
    if implementation == "s2attn":
        long_context.enable(model, group_size_ratio=0.25)
    else:
        model.set_attn_implementation(implementation)
    ids = torch.randint(0, 1000, (1, n))
    with peak_rss_delta() as peak:
        model.model(ids).last_hidden_state.pow(2).mean().backward()
    return peak["mb"]


def test_training_at_4x_the_context_fits_in_less_memory_than_full_attention(tiny_ref):
    n = 1024  # 4 x a 256-token context
    full = _train_step_mb(tiny_ref, "eager", n)  # full attention, the n x n scores held for backward
    s2 = _train_step_mb(tiny_ref, "s2attn", n)
    print(f"\npeak RSS of a training step at {n} tokens: full attention (eager) {full:.0f} MB, S²-Attn {s2:.0f} MB")
    assert s2 < full / 2, (full, s2)
