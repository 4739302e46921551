"""Memory and cost planner: peak training memory of full / LoRA / QLoRA from the model config alone.

    tuneline plan configs/default.yaml                 # plans for this machine
    tuneline plan configs/default.yaml --gpu-gb 24     # plans for a 24 GB GPU

No weights are loaded: the model of the base model dir's config.json (`prepare()` makes it; for `tiny`
it builds the random model, for the embedded models it converts once and caches) is built on the meta
device, as accelerate's init_empty_weights does, and its parameters are counted there. So any architecture
transformers knows is counted exactly (Llama, Gemma 3, Qwen2, Mistral; mixture-of-experts such as Mixtral
and Qwen2-MoE with every expert in memory, and only the routed experts in `active_params` and FLOPs), and
the LoRA adapter is counted by PEFT on that meta model. The activation formula below is per block: the
feed-forward width a token passes through (its routed experts for MoE) and every norm of the block.

Peak memory = weights + gradients + optimizer + autocast weight copies + activations + logits:

- weights: in the dtype tuneline loads them in to train (precision.training_dtype: bf16 for a frozen base
  on a bf16 GPU, else fp32; full fine-tuning fp32), the fp32 LoRA adapter included; QLoRA: the block
  linears in NF4 with double quantization, 0.5 + 1/64 + 4/(64*256) bytes per parameter; embeddings, norms,
  lm_head stay in `dtype`.
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
  compute dtype: fp32 on CPU); plus the RMSNorm inputs in fp32 (Llama: two, 8h bytes; Gemma 3: four and
  the per-head q/k norms). Checked with saved-tensor hooks: within 10 % of what autograd
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

import functools
import gc
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tuneline.model.precision import cuda_bf16, training_dtype, use_bf16
from tuneline.train.targets import ATTENTION, MLP, target_names

Method = Literal["full", "lora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora")
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 absmax-of-absmax per 256 blocks
QLORA_SLOWDOWN = 1.4
GB = 1024**3


class ModelShape(BaseModel):
    """What the planner needs of a decoder-only model, read off the model built on the meta device."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_width: int  # feed-forward width one token passes through: dense, or its routed experts plus shared ones
    norm_width: int  # summed width of the normalized tensors of one block per token (RMSNorm keeps its fp32 input)
    params: int  # every parameter once (tied embeddings once, every expert)
    active_params: int  # per token: the experts it is not routed to left out (= params for dense models)
    linear_params: int  # nn.Linear weights in the blocks (4-bit packed by QLoRA; autocast copies)
    matmul_params: int  # linear_params plus fused expert weights (their autocast copies)
    embedding_params: int  # input embeddings plus an untied lm_head
    config_json: str  # the model's config, to count an adapter on the meta model (lora_params)
    tied: bool = True
    attention: str = "sdpa"

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def meta_model(config):
    """The causal LM of `config` on the meta device: every module and shape, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def shape_from_config(config) -> ModelShape:
    """From a transformers PretrainedConfig or a config.json dict: the model is built on the meta device
    (as accelerate's init_empty_weights does) and its parameters counted, so any architecture transformers
    knows is counted exactly (Llama, Gemma 3, Qwen2, Mistral, Mixtral and Qwen2-MoE experts)."""
    from transformers import AutoConfig

    if isinstance(config, dict):
        config = AutoConfig.for_model(**config)
    return shape_from_model(meta_model(config))


def shape_from_model(model) -> ModelShape:
    """Walk the decoder blocks of a (meta) model: its widths, norms, linears and experts."""
    import torch

    text = _text_config(model.config)
    blocks = _blocks(model)
    hidden, heads = text.hidden_size, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    experts = getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None) or 0
    routed = getattr(text, "num_experts_per_tok", None) or 0
    share = routed / experts if experts else 1.0  # of each expert's weights, what one token uses
    mlp, norms, expert_params, fused = 0.0, 0, 0, 0
    for block in blocks:
        for name, module in block.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            own = dict(module.named_parameters(recurse=False))
            expert = ".experts." in f".{name}."  # one expert of a list of them (unfused MoE)
            if isinstance(module, torch.nn.Linear):
                expert_params += module.weight.numel() if expert else 0
                if leaf == "down_proj":
                    mlp += module.in_features * (share if expert else 1.0)
            elif "norm" in type(module).__name__.lower() and "weight" in own:
                width = own["weight"].numel()
                # per-head q/k norms (Gemma 3, Qwen3) run over every head
                norms += width * (heads if leaf.startswith("q") else kv_heads) if width == head_dim else width
            for pname, p in own.items():
                if p.dim() == 3 and experts and p.shape[0] == experts:  # fused experts: (experts, out, in)
                    expert_params += p.numel()
                    fused += p.numel()
                    if pname == "down_proj":
                        mlp += p.shape[-1] * routed
    params = sum(p.numel() for p in model.parameters())  # a tied tensor once
    linear_weights = sum(m.weight.numel() for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear))
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is None or out.weight is inp.weight
    n = len(blocks)
    return ModelShape(
        vocab=inp.weight.shape[0], hidden=hidden, layers=n, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        mlp_width=round(mlp / n), norm_width=round(norms / n), params=params,
        active_params=params - round(expert_params * (1 - share)),
        linear_params=linear_weights, matmul_params=linear_weights + fused,
        embedding_params=inp.weight.numel() + (0 if tied else out.weight.numel()),
        config_json=model.config.to_json_string(use_diff=False), tied=tied,
        attention=getattr(model.config, "_attn_implementation", None) or "sdpa",
    )


def _blocks(model) -> list:
    """The decoder blocks: the ModuleList holding the most parameters (an expert list sits inside it)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no list of decoder blocks found")
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))


def shape_from_dir(path: str | Path) -> ModelShape:
    """The shape of a local model dir's config.json (or a hub id's, through transformers' config cache)."""
    from transformers import AutoConfig

    return shape_from_config(AutoConfig.from_pretrained(str(path)))


def lora_params(shape: ModelShape, r: int, target_modules: list[str] | str = "all-linear",
                top_layers: int | None = None) -> int:
    """Trainable parameters of tuneline's LoRA adapter, counted by PEFT itself on the meta model: exact for
    any architecture (PEFT's 'all-linear' also adapts MoE routers and fused experts)."""
    names = target_modules if isinstance(target_modules, str) else tuple(target_modules)
    return r * _lora_per_rank(shape.config_json, names, top_layers)


@functools.lru_cache(maxsize=64)
def _lora_per_rank(config_json: str, target_modules: tuple[str, ...] | str, top_layers: int | None) -> int:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig

    from tuneline.config import SFTConfig
    from tuneline.train.methods import lora_config

    config = AutoConfig.for_model(**json.loads(config_json))
    model = meta_model(config)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    sft = SFTConfig(r=1, alpha=2, target_modules=targets, top_layers=top_layers)
    with torch.device("meta"):
        adapted = get_peft_model(model, lora_config(sft, len(_blocks(model))))
    return sum(p.numel() for p in adapted.parameters() if p.requires_grad)


class Workload(BaseModel):
    """One training step: rows x tokens, the LoRA adapter, dtypes."""

    batch_size: int = 8
    seq_len: int = 512
    r: int = 16
    target_modules: list[str] | str = "all-linear"
    top_layers: int | None = None
    bf16: bool = True  # bf16 autocast over fp32 weights (tuneline's default where the hardware has it)
    weight_bytes: int = 4  # of a frozen base: 4 fp32, 2 bf16 (tuneline under bf16); full fine-tuning keeps fp32
    # QLoRA's 4-bit matmuls return their compute dtype: bf16 on bf16 GPUs, fp32 on CPU (tuneline's load_model).
    qlora_compute_bf16: bool = True
    gradient_checkpointing: bool = False


class Estimate(BaseModel):
    method: str
    gradient_checkpointing: bool
    trainable_params: int
    parts: dict[str, float]  # bytes
    relative_time: float  # LoRA without gradient checkpointing = 1.0
    flops_per_token: float = 0.0  # training FLOPs per token, of the active parameters (MoE: routed experts only)

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
    h, kv, i, L = shape.hidden, shape.kv_dim, shape.mlp_width, shape.layers
    tokens = w.batch_size * w.seq_len
    act = 2 if w.bf16 else 4
    lin = shape.linear_params
    # fp32: trained weights (full: master weights), and QLoRA's unquantized ones (prepare_model_for_kbit_training upcasts)
    wb = 4 if method in ("full", "qlora") else w.weight_bytes
    if method == "qlora":  # bitsandbytes packs the nn.Linear weights; embeddings, norms, fused experts stay
        weights = lin * NF4_BYTES + (shape.params - lin) * wb
    else:
        weights = shape.params * wb
    trainable = shape.params if method == "full" else lora_params(shape, w.r, w.target_modules, w.top_layers)
    if method != "full":
        weights += trainable * 4  # the fp32 adapter itself
    if method != "full" and w.top_layers:  # no backward below the lowest adapted layer: nothing kept there
        kept_layers = min(w.top_layers, L)
    else:
        kept_layers = L
    # Matmul weights whose bf16 copy autograd keeps: the block matmuls with a backward (QLoRA's 4-bit ones
    # keep no copy), lm_head.
    block_copies = (shape.matmul_params - (lin if method == "qlora" else 0)) * kept_layers // L
    copied = 0 if not (w.bf16 and wb == 4) else shape.vocab * h + block_copies
    # Inputs of matmuls whose weights train (autograd keeps them): under autocast each matmul keeps its own
    # bf16 cast (q, k, v: 3; gate, up: 2), in fp32 they share one per group.
    targets = set(ATTENTION + MLP) if method == "full" else set(target_names(w.target_modules))
    inputs = (3 if w.bf16 else 1) * bool(targets & {"q_proj", "k_proj", "v_proj"}) + \
        (2 if w.bf16 else 1) * bool(targets & {"gate_proj", "up_proj"})
    expanded = 2 * (shape.q_dim - kv)  # grouped-query k, v repeated to every head for SDPA
    mlp = 4 if (method == "qlora" and not w.qlora_compute_bf16) else act  # gate, up: the 4-bit matmul's dtype
    per_layer_token = act * (inputs * h + 2 * shape.q_dim + 2 * kv + expanded) + mlp * 4 * i \
        + 4 * shape.norm_width  # bytes
    if shape.attention == "eager":
        per_layer_token += act * 2 * shape.heads * w.seq_len
    if w.gradient_checkpointing:
        activations = tokens * (kept_layers * 4 * h + per_layer_token)
    else:
        activations = tokens * kept_layers * per_layer_token
    logits = tokens * shape.vocab * 12.0
    parts = {"weights": weights, "gradients": trainable * 4.0, "optimizer": trainable * 8.0,
             "autocast_copies": copied * 2.0, "activations": float(activations), "logits": float(logits)}
    rel = relative_time(method, w.gradient_checkpointing)
    return Estimate(method=method, gradient_checkpointing=w.gradient_checkpointing, trainable_params=trainable,
                    parts=parts, relative_time=rel, flops_per_token=rel * 4 * shape.active_params)


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
    gpu = for_gpu or cuda_bf16()
    frozen = training_dtype(bf16, full_weight=False, on_gpu=gpu)  # estimate() keeps full fine-tuning at fp32
    return Workload(batch_size=sft.batch_size, seq_len=max_tokens, r=sft.r, target_modules=sft.target_modules,
                    top_layers=sft.top_layers, bf16=bf16, gradient_checkpointing=sft.gradient_checkpointing,
                    weight_bytes=2 if frozen == "bfloat16" else 4, qlora_compute_bf16=gpu)


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
    meta = {"model_params": shape.params, "active_params": shape.active_params,
            "available_gb": round(gb, 2), "memory_source": where,
            "batch_size": w.batch_size, "seq_len": w.seq_len, "bf16": w.bf16, "configured_method": sft.method,
            "estimated_gb": {r["method"]: r["estimated_gb"] for r in rows},
            "fits": {r["method"]: r["fits"] for r in rows},
            "relative_time": {r["method"]: r["relative_time"] for r in rows},
            "auto_method": choice.method if choice else None,
            "auto_gradient_checkpointing": choice.gradient_checkpointing if choice else None,
            "auto_reason": choice.reason if choice else why}
    active = f", {shape.active_params / 1e6:.1f}M active per token" if shape.active_params != shape.params else ""
    title = f"Memory plan: {ref.source} ({shape.params / 1e6:.1f}M parameters{active}), " \
            f"batch {w.batch_size} x {w.seq_len} tokens"
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
    model = load_model(ref, "bfloat16" if w.weight_bytes == 2 and method != "full" else "float32",
                       quantize_4bit=method == "qlora")
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
    shape = shape_from_dir(ref.path)
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
