"""LongLoRA: shifted sparse attention (S²-Attn) while training, full attention everywhere else.

    .venv/bin/pytest -q tests/integration/test_long_context.py   # equals causal attention with one group; group
                                                                 # structure; memory at 4x the model's length

`sft.long_context: {group_size_ratio: 0.25}` (with a LoRA method) trains long sequences the LongLoRA way
(Chen et al. 2023): the sequence is cut into groups of `ratio * length` tokens and each token attends only
inside its group, causally; half of the heads see groups shifted by half a group, so information flows
between neighbouring groups through those heads. Attention then costs groups x group² instead of length².
Beside LoRA, the embeddings and the norms train too (LongLoRA found that needed for long context).

How: transformers 5 looks attention functions up by name (`AttentionInterface`); S²-Attn is registered as
"s2attn" (with sdpa's mask builder), and `enable(model, cfg)` points the model's config at it. The function
runs S²-Attn only while its module is in training mode; in eval mode (mid-training evaluation, generation)
it is plain sdpa. `disable(model)` puts the original implementation back before the adapter is saved, so
nothing downstream (evaluation, DPO, merge, export) ever sees S²-Attn: it loads the base with full attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "s2attn"
# Modules LongLoRA trains beside LoRA, as PEFT modules_to_save (matched by name suffix: "norm" is every norm
# of Llama / Qwen2 / Gemma / Mistral models, input_layernorm and the final norm alike).
EMBEDDINGS_AND_NORMS = ["embed_tokens", "norm"]


def group_size(n: int, ratio: float) -> int:
    """Tokens per group: ratio * n, even (the shift is exactly half a group), at least 2; n for one group."""
    g = int(n * ratio)
    return n if g >= n or n < 4 else max(2, g - g % 2)


def s2_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs):
    """The attention function transformers calls per layer: query/key/value (batch, heads, length, dim) ->
    (batch, length, heads, dim). S²-Attn in training mode, sdpa otherwise (and for single-token steps)."""
    n = query.shape[2]
    if not module.training or n < 2 or key.shape[2] != n:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    ratio = getattr(module.config, "s2_group_size_ratio", 0.25)
    out = shifted_sparse_attention(query, key, value, attention_mask, ratio, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


def shifted_sparse_attention(q, k, v, mask: torch.Tensor | None, ratio: float, scaling: float | None = None,
                             dropout: float = 0.0) -> torch.Tensor:
    """S²-Attn on (batch, heads, length, dim) tensors; `mask` None (causal) or bool (batch, 1, length, length),
    True where a query may attend (sdpa's mask: causal, with padding or packed rows). Returns (batch, heads,
    length, dim).

    Heads [0, H/2) attend causally within groups [0, g), [g, 2g), ...; heads [H/2, H) within groups shifted by
    half a group: [0, g/2), [g/2, 3g/2), ... LongLoRA rolls the sequence instead, so its last shifted group
    wraps round and lets the first tokens see the last ones; here the first half-group is a group of its own,
    so no token ever sees a later one. Without a mask every group runs as sdpa with is_causal (CPU and GPU
    then pick their fused kernels, which never hold a group x group score matrix)."""
    n, h = q.shape[2], q.shape[1]
    k, v = repeat_kv(k, h // k.shape[1]), repeat_kv(v, h // v.shape[1])
    g = group_size(n, ratio)
    shift = g // 2 if g < n and h > 1 else 0
    half = h // 2 if shift else h
    parts = [_grouped(q[:, :half], k[:, :half], v[:, :half], mask, g, 0, scaling, dropout)]
    if half < h:
        parts.append(_grouped(q[:, half:], k[:, half:], v[:, half:], mask, g, shift, scaling, dropout))
    return torch.cat(parts, dim=1)


def _grouped(q, k, v, mask, g: int, offset: int, scaling, dropout) -> torch.Tensor:
    """Causal attention within [0, offset) and then groups of g tokens from `offset` on (the last one padded
    at the end: padded keys come after every real query, so causality already hides them)."""
    b, h, n, d = q.shape
    outs = []
    if offset:
        front = mask[:, :, :offset, :offset] if mask is not None else None
        outs.append(_attend(q[:, :, :offset], k[:, :, :offset], v[:, :, :offset], front, scaling, dropout))
    rest, pad = n - offset, (-(n - offset)) % g
    groups = (rest + pad) // g

    def grouped(x):  # (b, h, n, d) -> (b * groups, h, g, d): 4-d, so sdpa can use its fused kernels
        x = F.pad(x[:, :, offset:], (0, 0, 0, pad)).view(b, h, groups, g, d).transpose(1, 2)
        return x.reshape(b * groups, h, g, d)

    blocks = None
    if mask is not None:  # the caller's mask inside each group: (b * groups, 1, g, g)
        m = F.pad(mask[:, 0, offset:, offset:].expand(b, rest, rest), (0, pad, 0, pad))
        blocks = torch.diagonal(m.view(b, groups, g, groups, g), dim1=1, dim2=3).permute(0, 3, 1, 2)
        blocks = blocks | torch.eye(g, dtype=torch.bool, device=m.device)  # padded rows attend to themselves
        blocks = blocks.reshape(b * groups, 1, g, g)
    o = _attend(grouped(q), grouped(k), grouped(v), blocks, scaling, dropout).view(b, groups, h, g, d)
    outs.append(o.transpose(1, 2).reshape(b, h, rest + pad, d)[:, :, :rest])
    return torch.cat(outs, dim=2)


def _attend(q, k, v, mask, scaling, dropout):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                          scale=scaling)


def register() -> None:
    """Make "s2attn" a known attention implementation (its masks built as sdpa's)."""
    AttentionInterface.register(NAME, s2_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def enable(model, group_size_ratio: float) -> str:
    """Train `model` with S²-Attn; returns the implementation it had (`disable` puts it back)."""
    register()
    config = model.config
    before = config._attn_implementation
    config.s2_group_size_ratio = group_size_ratio
    config.s2_restore = before
    model.set_attn_implementation(NAME)
    return before


def disable(model) -> None:
    """Full attention again, the implementation `enable` replaced (before saving or handing the model on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != NAME:
        return
    base.set_attn_implementation(getattr(base.config, "s2_restore", None) or "sdpa")
    for key in ("s2_group_size_ratio", "s2_restore"):
        if hasattr(base.config, key):
            delattr(base.config, key)
