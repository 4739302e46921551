"""Memory and cost planner: peak training memory of full / LoRA / QLoRA from the model config alone.

    tuneline plan configs/default.yaml                 # plans for this machine
    tuneline plan configs/default.yaml --gpu-gb 24     # plans for a 24 GB GPU

No weights are loaded: the shape comes from the base model dir's config.json (`prepare()` makes it;
for `tiny` it builds the random model, for the embedded model it converts once and caches).

Peak memory = weights + gradients + optimizer + autocast weight copies + activations + logits:

- weights: fp32 (tuneline loads fp32; bf16 is autocast), the LoRA adapter included; QLoRA: the block linears in NF4 with
  double quantization, 0.5 + 1/64 + 4/(64*256) bytes per parameter; embeddings, norms, lm_head
  stay in `dtype`.
- gradients: 4 bytes per trainable parameter; optimizer: AdamW, two fp32 states, 8 bytes.
- autocast copies: under bf16 autocast every matmul casts its fp32 weight to bf16 and autograd keeps
  that copy for the backward of the layer's input: 2 bytes per parameter of every matmul weight
  (the block linears and the lm_head/embedding matrix). QLoRA saves the 4-bit weight instead (no
  copy), and so does a model loaded in bf16.
- activations: per token and layer, the tensors autograd keeps for a Llama block (the count of
  Korthikanti et al. 2022, "Reducing Activation Recomputation", re-derived for SwiGLU, grouped-query
  attention and SDPA, which keeps no seq x seq scores): in the activation dtype, the inputs of the
  q/k/v and gate/up matmuls (under autocast each matmul casts its own bf16 copy: 5h; in fp32 they
  share two: 2h), rotated q and k, v and the attention output (2q + 2kv; grouped-query k and v
  repeated to all heads: + 2(q - kv)), gate, silu(gate), up and their product (4i; for QLoRA in its
  compute dtype: fp32 on CPU); plus the two RMSNorm inputs in fp32 (8h bytes). Checked with saved-tensor hooks: within 10 % of what autograd
  keeps. Eager attention adds the
  softmax (2 x heads x seq per token). With gradient checkpointing: one fp32 hidden state per
  layer plus one layer's activations while it is recomputed.
- logits: batch x seq x vocab x 12 bytes: the loss upcasts the logits to fp32, keeps the fp32
  log-softmax, and its backward holds that, the incoming and the outgoing fp32 gradient at once
  (measured 12.1-12.7 bytes per entry on the tiny model, bf16 and fp32 alike).

Not in the estimate: the framework's own memory (CUDA context, 0.3-1 GB, outside PyTorch's
allocator; on CPU about 50 MB of thread pools and kernels) and allocator slack: on CPU, glibc keeps
freed blocks, so peak RSS runs up to ~2x the live tensors for models whose activations are many
mid-sized tensors (the `headroom` of `choose_method` is for these).

Relative time is the FLOPs model of the guides: forward 2P per token; backward 4P for full
fine-tuning (input and weight gradients) and 2P for frozen bases (input gradients only);
recompute +2P with gradient checkpointing; QLoRA's dequantization costs about 1.4x LoRA's time
(bitsandbytes on GPU; an assumption, not a measurement here). Cost is proportional to time on one
machine, so the column reads for both.

`choose_method` picks a method for `method: auto`: the fastest that fits of LoRA, QLoRA, and either
with gradient checkpointing (LoRA 1.0 < QLoRA 1.4 < LoRA + checkpointing 1.5 < QLoRA + checkpointing
2.1); full fine-tuning only when asked for as a candidate.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tuneline.model.precision import cuda_bf16, use_bf16
from tuneline.train.targets import ATTENTION, MLP, target_names

Method = Literal["full", "lora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora")
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 absmax-of-absmax per 256 blocks
QLORA_SLOWDOWN = 1.4
GB = 1024**3


class ModelShape(BaseModel):
    """What the planner needs of a decoder-only (Llama-style) model."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = True
    attention: str = "sdpa"

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def block_linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.block_linear_params + self.embedding_params + self.norm_params


def shape_from_config(config) -> ModelShape:
    """From a transformers PretrainedConfig or a config.json dict."""
    get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    return ModelShape(
        vocab=get("vocab_size"), hidden=hidden, layers=get("num_hidden_layers"),
        intermediate=get("intermediate_size"), heads=heads, kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or hidden // heads, tied=bool(get("tie_word_embeddings", True)),
        attention=get("_attn_implementation") or get("attn_implementation") or "sdpa",
    )


def shape_from_dir(path: str | Path) -> ModelShape:
    """Read config.json of a local model dir (or a hub id through transformers' config cache)."""
    cfg = Path(path) / "config.json"
    if cfg.exists():
        return shape_from_config(json.loads(cfg.read_text()))
    from transformers import AutoConfig

    return shape_from_config(AutoConfig.from_pretrained(str(path)))


def lora_params(shape: ModelShape, r: int, target_modules: list[str] | str = "all-linear",
                top_layers: int | None = None) -> int:
    layers = min(top_layers or shape.layers, shape.layers)
    lin = shape.linear_shapes()
    return layers * sum(r * (lin[t][0] + lin[t][1]) for t in target_names(target_modules))


class Workload(BaseModel):
    """One training step: rows x tokens, the LoRA adapter, dtypes."""

    batch_size: int = 8
    seq_len: int = 512
    r: int = 16
    target_modules: list[str] | str = "all-linear"
    top_layers: int | None = None
    bf16: bool = True  # bf16 autocast over fp32 weights (tuneline's default where the hardware has it)
    weight_bytes: int = 4  # 4: fp32 weights (tuneline), 2: weights loaded in bf16/fp16
    # QLoRA's 4-bit matmuls return their compute dtype: bf16 on bf16 GPUs, fp32 on CPU (tuneline's load_model).
    qlora_compute_bf16: bool = True
    gradient_checkpointing: bool = False


class Estimate(BaseModel):
    method: str
    gradient_checkpointing: bool
    trainable_params: int
    parts: dict[str, float]  # bytes
    relative_time: float  # LoRA without gradient checkpointing = 1.0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def gb(self) -> float:
        return self.total / GB

    def fits(self, gb: float, headroom: float) -> bool:
        return self.gb <= gb * headroom


def estimate(shape: ModelShape, method: str, w: Workload) -> Estimate:
    """Peak training memory of one method, in bytes per part (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}': {', '.join(METHODS)}")
    h, kv, i, L = shape.hidden, shape.kv_dim, shape.intermediate, shape.layers
    tokens = w.batch_size * w.seq_len
    act = 2 if w.bf16 else 4
    lin, emb, norms = shape.block_linear_params, shape.embedding_params, shape.norm_params
    if method == "qlora":
        weights = lin * NF4_BYTES + (emb + norms) * w.weight_bytes
    else:
        weights = shape.params * w.weight_bytes
    trainable = shape.params if method == "full" else lora_params(shape, w.r, w.target_modules, w.top_layers)
    if method != "full":
        weights += trainable * 4  # the fp32 adapter itself
    if method != "full" and w.top_layers:  # no backward below the lowest adapted layer: nothing kept there
        kept_layers = min(w.top_layers, L)
    else:
        kept_layers = L
    # Matmul weights whose bf16 copy autograd keeps: the block linears with a backward (not for QLoRA), lm_head.
    block_copies = 0 if method == "qlora" else lin * kept_layers // L
    copied = 0 if not (w.bf16 and w.weight_bytes == 4) else shape.vocab * h + block_copies
    # Inputs of matmuls whose weights train (autograd keeps them): under autocast each matmul keeps its own
    # bf16 cast (q, k, v: 3; gate, up: 2), in fp32 they share one per group.
    targets = set(ATTENTION + MLP) if method == "full" else set(target_names(w.target_modules))
    inputs = (3 if w.bf16 else 1) * bool(targets & {"q_proj", "k_proj", "v_proj"}) + \
        (2 if w.bf16 else 1) * bool(targets & {"gate_proj", "up_proj"})
    expanded = 2 * (shape.q_dim - kv)  # grouped-query k, v repeated to every head for SDPA
    mlp = 4 if (method == "qlora" and not w.qlora_compute_bf16) else act  # gate, up: the 4-bit matmul's dtype
    per_layer_token = act * (inputs * h + 2 * shape.q_dim + 2 * kv + expanded) + mlp * 4 * i + 8 * h  # bytes
    if shape.attention == "eager":
        per_layer_token += act * 2 * shape.heads * w.seq_len
    if w.gradient_checkpointing:
        activations = tokens * (kept_layers * 4 * h + per_layer_token)
    else:
        activations = tokens * kept_layers * per_layer_token
    logits = tokens * shape.vocab * 12.0
    parts = {"weights": weights, "gradients": trainable * 4.0, "optimizer": trainable * 8.0,
             "autocast_copies": copied * 2.0, "activations": float(activations), "logits": float(logits)}
    return Estimate(method=method, gradient_checkpointing=w.gradient_checkpointing, trainable_params=trainable,
                    parts=parts, relative_time=relative_time(method, w.gradient_checkpointing))


def relative_time(method: str, gradient_checkpointing: bool = False) -> float:
    """FLOPs per token relative to LoRA (2P forward + 2P input-gradient backward)."""
    flops = {"full": 6.0, "lora": 4.0, "qlora": 4.0 * QLORA_SLOWDOWN}[method]
    if gradient_checkpointing:
        flops += 2.0 * (QLORA_SLOWDOWN if method == "qlora" else 1.0)
    return flops / 4.0


def plan(shape: ModelShape, w: Workload, methods: tuple[str, ...] = METHODS) -> list[Estimate]:
    """Every method with and without gradient checkpointing."""
    out = []
    for m in methods:
        for gc_on in (False, True):
            out.append(estimate(shape, m, w.model_copy(update={"gradient_checkpointing": gc_on})))
    return out


class Choice(BaseModel):
    method: str
    gradient_checkpointing: bool
    estimate_gb: float
    available_gb: float
    reason: str


def choose_method(estimates: list[Estimate], available_gb: float, headroom: float = 0.85,
                  preference: tuple[str, ...] = ("lora", "qlora")) -> Choice:
    """Pick the method for `method: auto`: of the `preference` methods, with or without gradient
    checkpointing, the fastest (lowest relative time/cost) whose estimate fits in `headroom` of the
    memory; ties go to the earlier method in `preference`. `headroom` keeps a share free for what the
    estimate leaves out (CUDA context, allocator slack, the data loader). Raises when nothing fits."""
    budget = available_gb * headroom
    ranked = sorted((e for e in estimates if e.method in preference),
                    key=lambda e: (e.relative_time, preference.index(e.method), e.gradient_checkpointing))
    if not ranked:
        raise ValueError(f"no estimate for any of {preference}")
    name = lambda e: e.method + (" + gradient checkpointing" if e.gradient_checkpointing else "")  # noqa: E731
    for n, e in enumerate(ranked):
        if e.gb <= budget:
            why = f"{name(e)}: {e.gb:.2f} GB <= {budget:.2f} GB ({headroom:.0%} of {available_gb:.1f} GB)"
            if n:
                why += "; faster but too big: " + ", ".join(f"{name(x)} {x.gb:.2f} GB" for x in ranked[:n])
            return Choice(method=e.method, gradient_checkpointing=e.gradient_checkpointing,
                          estimate_gb=round(e.gb, 3), available_gb=available_gb, reason=why)
    smallest = min(ranked, key=lambda e: e.total)
    raise ValueError(
        f"no method fits in {budget:.2f} GB ({headroom:.0%} of {available_gb:.1f} GB): the smallest is "
        f"{name(smallest)} at {smallest.gb:.2f} GB. Lower sft.batch_size (with grad_accum to keep the effective "
        "batch) or data.max_tokens, adapt fewer layers (sft.top_layers), or use a larger GPU.")


def available_memory_gb() -> tuple[float, str]:
    """The GPU's memory where there is one, else this host's available RAM (CPU training)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GB, f"GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20, "CPU RAM available"
    except OSError:
        pass
    return 16.0, "unknown (assumed 16 GB)"


def workload_from(sft, max_tokens: int, bf16: bool, for_gpu: bool = False) -> Workload:
    """The planner's workload for tuneline's SFT config (rows padded to data.max_tokens: an upper bound)."""
    return Workload(batch_size=sft.batch_size, seq_len=max_tokens, r=sft.r, target_modules=sft.target_modules,
                    top_layers=sft.top_layers, bf16=bf16, gradient_checkpointing=sft.gradient_checkpointing,
                    qlora_compute_bf16=for_gpu or cuda_bf16())


def resolve_method(shape: ModelShape, sft, max_tokens: int, available_gb: float | None = None):
    """For `method: auto`: (the SFT config with method and gradient checkpointing chosen, why); any other
    method: (the config unchanged, None). Raises ValueError, with the table's numbers, when nothing fits."""
    if sft.method != "auto":
        return sft, None
    gb, where = (available_gb, "given") if available_gb is not None else available_memory_gb()
    w = workload_from(sft, max_tokens, use_bf16(sft.bf16, for_gpu=False))
    choice = choose_method(plan(shape, w, ("lora", "qlora")), gb)
    chosen = sft.model_copy(update={"method": choice.method,
                                    "gradient_checkpointing": sft.gradient_checkpointing or choice.gradient_checkpointing})
    return chosen, f"{choice.reason} ({gb:.1f} GB, {where})"


def table(estimates: list[Estimate], available_gb: float, headroom: float = 0.85) -> list[dict]:
    rows = []
    for e in estimates:
        rows.append({"method": e.method + (" + grad ckpt" if e.gradient_checkpointing else ""),
                     "estimated_gb": round(e.gb, 3), "fits": e.fits(available_gb, headroom),
                     "relative_time": round(e.relative_time, 2), "trainable_params": e.trainable_params,
                     **{f"{k}_gb": round(v / GB, 3) for k, v in e.parts.items()}})
    return rows


def format_table(rows: list[dict], available_gb: float, headroom: float = 0.85) -> str:
    head = f"{'method':24} {'est. GB':>8} {'fits':>5} {'rel. time/cost':>14} {'trainable':>12}   " \
           f"{'weights':>8} {'grads':>7} {'optim':>7} {'copies':>7} {'activ.':>7} {'logits':>7}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['method']:24} {r['estimated_gb']:>8.3f} {'yes' if r['fits'] else 'NO':>5} "
                     f"{r['relative_time']:>13.2f}x {r['trainable_params']:>12,}   {r['weights_gb']:>8.3f} "
                     f"{r['gradients_gb']:>7.3f} {r['optimizer_gb']:>7.3f} {r['autocast_copies_gb']:>7.3f} "
                     f"{r['activations_gb']:>7.3f} {r['logits_gb']:>7.3f}")
    lines.append(f"fits: estimate <= {headroom:.0%} of {available_gb:.1f} GB; relative time/cost: LoRA = 1.00 "
                 f"(FLOPs; QLoRA {QLORA_SLOWDOWN}x LoRA assumed); parts in GB")
    return "\n".join(lines)


def plan_report(ref, sft, max_tokens: int, gpu_gb: float | None = None, headroom: float = 0.85) -> tuple[str, dict]:
    """What the `plan` step shows: an HTML table and flat metadata (estimates, the auto choice)."""
    shape = shape_from_dir(ref.path)
    gb, where = (gpu_gb, "given") if gpu_gb else available_memory_gb()
    w = workload_from(sft, max_tokens, use_bf16(sft.bf16, for_gpu=bool(gpu_gb)), for_gpu=bool(gpu_gb))
    ests = plan(shape, w)
    rows = table(ests, gb, headroom)
    try:
        choice, why = choose_method(ests, gb, headroom), None
    except ValueError as err:
        choice, why = None, str(err)
    meta = {"model_params": shape.params, "available_gb": round(gb, 2), "memory_source": where,
            "batch_size": w.batch_size, "seq_len": w.seq_len, "bf16": w.bf16, "configured_method": sft.method,
            "estimated_gb": {r["method"]: r["estimated_gb"] for r in rows},
            "fits": {r["method"]: r["fits"] for r in rows},
            "relative_time": {r["method"]: r["relative_time"] for r in rows},
            "auto_method": choice.method if choice else None,
            "auto_gradient_checkpointing": choice.gradient_checkpointing if choice else None,
            "auto_reason": choice.reason if choice else why}
    title = f"Memory plan: {ref.source} ({shape.params / 1e6:.1f}M parameters), batch {w.batch_size} x {w.seq_len} tokens"
    from tuneline.dashboard import memory_plan_html

    return memory_plan_html(rows, title, choice.reason if choice else None, gb), meta


# --- measuring, to check the estimates -------------------------------------------------------------


def measure(ref, method: str, w: Workload, steps: int = 3, seed: int = 0) -> dict:
    """Peak memory of `steps` plain training steps (random tokens, batch x seq, HF loss, AdamW), above
    the level after loading the model: CUDA max_memory_allocated on a GPU, else the peak RSS delta.
    Returns measured and estimated bytes of the dynamic part (everything but the weights)."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    from tuneline.config import SFTConfig
    from tuneline.model.base import load_model
    from tuneline.train.memory import peak_rss_delta
    from tuneline.train.methods import lora_config
    from tuneline.train.qlora_guard import guard_4bit

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    model = load_model(ref, quantize_4bit=method == "qlora")
    model.config.use_cache = False
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=w.gradient_checkpointing)
        guard_4bit(model)
    elif w.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if method != "full":
        cfg = SFTConfig(r=w.r, alpha=2 * w.r, target_modules=w.target_modules, top_layers=w.top_layers)
        model = get_peft_model(model, lora_config(cfg, model.config.num_hidden_layers))
    if cuda and method != "qlora":
        model = model.cuda()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())  # the adapter included, as in the estimate
    shape = shape_from_config(model.config)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with torch.no_grad():  # safetensors weights are memory-mapped: fault every page in before the window
        for t in list(model.parameters()) + list(model.buffers()):
            t.sum()
    device = "cuda" if cuda else "cpu"
    ids = torch.randint(10, shape.vocab, (w.batch_size, w.seq_len), device=device)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with peak_rss_delta() as peak:
        for _ in range(steps):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=w.bf16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
    measured = (torch.cuda.max_memory_allocated() - base) if cuda else peak["mb"] * 2**20
    est = estimate(shape, method, w.model_copy(update={"qlora_compute_bf16": cuda_bf16()}))
    dynamic = est.total - est.parts["weights"]
    del model, opt
    gc.collect()
    return {"method": method, "device": "cuda" if cuda else "cpu (peak RSS delta)", "batch_size": w.batch_size,
            "seq_len": w.seq_len, "measured_mb": round(measured / 2**20, 1), "estimated_mb": round(dynamic / 2**20, 1),
            "ratio": round(dynamic / measured, 3) if measured > 0 else math.nan,
            "weights_mb": round(weights / 2**20, 1), "estimated_weights_mb": round(est.parts["weights"] / 2**20, 1),
            "total_ratio": round(est.total / (measured + weights), 3) if measured > 0 else math.nan}
