"""LoRA vs QLoRA through tuneline's SFT path: peak memory, tokens/s, MFU, and which CUDA paths were taken.

    bash bench/gpu.sh                                   # the whole device check (this, then optionally the pipeline)
    python bench/gpu_bench.py                           # CUDA: 1B-class random config + the embedded model
    python bench/gpu_bench.py --models small --steps 2  # no CUDA: the CPU fallback (what the test runs)

Each run is `tuneline.train.sft.build_trainer` + `trainer.train()` exactly as `train_sft` builds it (LoRA r16
all-linear, completion-only loss, padding-free, bf16 where the device has it) on the Banking77 training rows
as tuneline prepares them; only the method (lora / qlora), the step count and the batch size differ.

Models: `1b` is a randomly initialised Llama (hidden 2048, 16 layers, MLP 8192, the embedded tokenizer's
vocabulary; ~1.2B parameters) built from a config by tuneline's `tiny` source: no hub. `embedded` is
SmolLM2-135M-Instruct. `small` (the CPU fallback) is a 4-layer, hidden-256 random Llama.

A machine without the embedded model's GGUF (a device machine takes 64 MiB of files; the GGUF is 94 MB):
`--write-shapes DIR` here writes the embedded model's tokenizer and config and the validated training rows
(~4 MB); `--shapes DIR` there builds every model from them with random weights (`embedded` keeps
SmolLM2-135M's exact shapes). Speed and memory depend on the shapes, not on the weights' values; the loss
column then means nothing.
`--default-sft` also runs configs/default.yaml's SFT section in full (every epoch, every training row) on the
embedded model's shapes: the GPU's figure for the pipeline's train_sft step.
`--seq N` trains on rows of ~N tokens (Banking77 questions joined) instead of ~40-token rows; with `--padded`
and `--gradient-checkpointing` it shows where weights, not activations, set the peak. `--attention
flex_attention` switches the built model's attention; `--profile` prints each run's top operators by device
and host time (how the cuDNN attention planning cost was found: docs/results/2026-12-04-gpu.md).

Figures:
  peak MB      CUDA: torch.cuda.max_memory_allocated over the run; CPU: the resident-memory peak above the
               level at the start of training (tuneline.train.memory.peak_rss_delta)
  tokens/s     real (non-pad) tokens over optimizer steps 2..N (step 1 pays kernel selection, allocator set-up)
  MFU          tokens/s x 4*N FLOPs/token over the device's peak. 4*N: LoRA on a frozen base costs a forward
               (2N) plus the activation gradients (2N); no weight gradients for the base; LoRA's own FLOPs,
               attention's seq^2 term (rows here are ~40 tokens) and 4-bit dequantisation are not counted.
               N = every parameter of the base (tied embeddings counted once: the LM head's matmul).
  paths        optim (paged_adamw_* for QLoRA on CUDA), bf16 autocast, the attention implementation,
               whether the base linears are bitsandbytes 4-bit.
QLoRA needs bitsandbytes' CUDA kernels to save memory; without CUDA it is skipped, and the table says why.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import gc
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

# Random configs built by tuneline's `tiny` source (BaseModelConfig.tiny): no download, seconds to build.
MODELS = {
    "1b": {"layers": 16, "hidden": 2048, "heads": 32, "intermediate": 8192},
    "small": {"layers": 4, "hidden": 256, "heads": 4, "intermediate": 768},
}
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch.cuda.get_device_name().
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                   "RTX 4090": 165.0, "RTX 3090": 71.0, "T4": 65.0, "V100": 125.0}
QLORA_GOAL = 0.45  # QLoRA's peak memory as a share of LoRA's (issue 18)


def cpu_peak_gflops() -> tuple[float, str]:
    """An estimate of this CPU's bf16 (or fp32) matmul peak, and how it was reckoned.

    FLOPs per cycle per core: AMX-BF16 1024; AVX512-BF16 64 (one 512-bit VDPBF16PS per cycle, 32 bf16 pairs x 2:
    what AMD Zen 4 issues; Intel cores with two 512-bit FMA ports do twice that); AVX512F fp32 32; AVX2 fp32 32
    (two 256-bit FMA). Clock: /proc/cpuinfo's 'cpu MHz' (no turbo counted)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    mhz = next((float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")), 2500.0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    flags = set(next((line.split(":")[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    per_cycle, isa = ((1024, "AMX-BF16") if "amx_bf16" in flags else (64, "AVX512-BF16") if "avx512_bf16" in flags
                      else (32, "AVX512F fp32") if "avx512f" in flags else (32, "AVX2 fp32 FMA") if "fma" in flags
                      else (8, "SSE fp32"))
    peak = cores * mhz / 1000 * per_cycle
    return peak, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle ({isa}) = {peak:.0f} GFLOP/s"


def device_peak_gflops() -> tuple[float | None, str]:
    import torch

    if not torch.cuda.is_available():
        return cpu_peak_gflops()
    name = torch.cuda.get_device_name()
    tflops = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    return (tflops * 1000 if tflops else None), f"{name}: {tflops or '?'} TFLOP/s dense bf16"


def base_params(model_dir: str) -> int:
    """N for the FLOPs model: the base's parameters, counted on the meta device (4-bit packing hides them)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def lora_flops_per_token(n_params: int) -> float:
    """LoRA on a frozen base: forward 2N + activation gradients 2N (issue 18's model)."""
    return 4.0 * n_params


def model_ref(name: str, shapes: Path | None = None):
    from tuneline.config import BaseModelConfig, TinyModel
    from tuneline.model.base import prepare

    if shapes is not None:
        return random_ref(name, shapes)
    if name == "embedded":
        return prepare(BaseModelConfig())
    return prepare(BaseModelConfig(source="tiny", tiny=TinyModel(**MODELS[name])))


ROWS_FILE = "training_rows.json"


def write_shapes(out: Path) -> None:
    """The embedded model's tokenizer and config.json, and the training rows as validated here: all `--shapes`
    needs on a machine without the GGUF or Great Expectations."""
    from transformers import AutoConfig, AutoTokenizer

    from tuneline.config import BaseModelConfig
    from tuneline.model.base import prepare

    ref = prepare(BaseModelConfig())
    AutoTokenizer.from_pretrained(ref.path).save_pretrained(out)
    AutoConfig.from_pretrained(ref.path).save_pretrained(out)
    (out / ROWS_FILE).write_text(json.dumps(training_rows(ref), default=str))
    print(f"wrote the embedded model's tokenizer and config and the training rows to {out}")


def random_ref(name: str, shapes: Path):
    """Random weights of `name`'s shapes, built from the tokenizer and config in `shapes` (seconds; no GGUF)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuneline.config import BaseModelConfig, TinyModel
    from tuneline.model.base import BaseModelRef, build_tiny

    out = Path(tempfile.gettempdir()) / f"tuneline-gpu-bench-{name}"
    if not (out / "config.json").exists():
        if name == "embedded":
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shapes)).save_pretrained(out)
            AutoTokenizer.from_pretrained(shapes).save_pretrained(out)
        else:
            build_tiny(BaseModelConfig(source="tiny", tiny=TinyModel(**MODELS[name])), shapes, out)
    return BaseModelRef(source=f"random:{name}", path=str(out), sha256=f"random-{name}")


def training_rows(ref) -> list[dict]:
    """Banking77's training rows as tuneline prepares them, tokenized by `ref`'s tokenizer (every model here
    has the embedded model's)."""
    from tuneline.config import DataConfig
    from tuneline.data.validate import validate
    from tuneline.model.base import load_tokenizer

    task = validate(DataConfig(), load_tokenizer(ref)).task
    return task[task.split == "train"].to_dict("records")


def default_sft_config():
    """configs/default.yaml's SFT section, without the held-out evaluation (no held rows are given)."""
    from tuneline.config import load
    from tuneline.paths import PROJECT_ROOT

    return load(PROJECT_ROOT / "configs" / "default.yaml").sft.model_copy(update={"eval_steps": None})


def skip_reason(method: str) -> str | None:
    import torch

    if method == "qlora" and not torch.cuda.is_available():
        return ("no CUDA: bitsandbytes' 4-bit path saves memory (and pages AdamW) on CUDA; on CPU it dequantizes "
                "every matmul and resident memory is not comparable")
    return None


def long_rows(rows: list[dict], tokens: int, tokenizer, count: int = 256) -> list[dict]:
    """`count` rows of at most `tokens` prompt tokens for `--seq`: Banking77 questions joined into one user turn
    (cycling through them), the last one's answer kept (real text, completion-only loss as in training). At most
    `tokens`, so that the row cut at `tokens` + 128 never cuts the answer off."""
    questions = [(json.loads(r["prompt"]), r) for r in rows]
    sizes = [len(tokenizer(t[-1]["content"])["input_ids"]) + 1 for t, _ in questions]
    out, parts, n, i = [], [], 0, 0
    while len(out) < count:
        turns, row = questions[i % len(questions)]
        if parts and n + sizes[i % len(questions)] > tokens:
            out.append(row | {"prompt": json.dumps(turns[:-1] + [turns[-1] | {"content": "\n".join(parts)}])})
            parts, n = [], 0
        parts.append(turns[-1]["content"])
        n += sizes[i % len(questions)]
        i += 1
    return out


@contextlib.contextmanager
def profiled(on: bool):
    """torch.profiler over the block when `on`; prints the operators that took the most device and host time."""
    if not on:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        yield
    table = prof.key_averages()
    for key in (["self_cuda_time_total"] if torch.cuda.is_available() else []) + ["self_cpu_time_total"]:
        print(table.table(sort_by=key, row_limit=14, max_name_column_width=60), flush=True)


def run_one(ref, rows: list[dict], method: str, steps: int, batch: int, padding_free: bool = True,
            checkpointing: bool = False, max_tokens: int = 96, attention: str | None = None,
            profile: bool = False) -> dict:
    """One tuneline SFT run of `steps` optimizer steps; its figures and the paths it took."""
    from tuneline.config import SFTConfig

    cfg = SFTConfig(method=method, max_steps=steps, batch_size=batch, eval_steps=None, logging_steps=steps,
                    padding_free=padding_free, gradient_checkpointing=checkpointing)
    return run_sft(ref, rows, cfg, max_tokens, attention, profile)


def run_sft(ref, rows: list[dict], cfg, max_tokens: int = 96, attention: str | None = None,
            profile: bool = False) -> dict:
    """`train_sft`'s trainer on `rows` under `cfg`, timed per optimizer step; its figures and the paths it took.
    `attention`: switch the built model to another transformers attention implementation (flex_attention)."""
    import torch

    from tuneline.train import checkpoints
    from tuneline.train.memory import peak_rss_delta
    from tuneline.train.sft import build_trainer

    times: list[float] = []
    tokens: list[int] = []
    with tempfile.TemporaryDirectory(prefix="tuneline-gpu-bench-") as tmp:
        checkpoints.CHECKPOINT_ROOT = Path(tmp) / "ckpt"  # fresh: never resume another run's checkpoint
        trainer = build_trainer(ref, rows, cfg, Path(tmp) / "out", max_tokens=max_tokens)
        if attention:
            trainer.model.get_base_model().set_attn_implementation(attention)
        inner = trainer.training_step

        def timed_step(model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
            t0 = time.perf_counter()
            out = inner(model, inputs, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            return out

        trainer.training_step = timed_step  # the Trainer calls self.training_step: the numbers are untouched
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        wall = time.perf_counter()
        with peak_rss_delta() as rss, profiled(profile):
            trainer.train()
        wall = time.perf_counter() - wall
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else rss["mb"]
        model = trainer.model
        paths = {
            "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
            "bf16": bool(trainer.args.bf16),
            "attention": getattr(model.config, "_attn_implementation", None) or "?",
            "4bit": any(type(m).__name__ == "Linear4bit" for m in model.modules()),
            "device": str(next(model.parameters()).device),
            "base_dtype": str(next(p for p in model.parameters() if not p.requires_grad).dtype).split(".")[-1],
            "checkpointing": bool(cfg.gradient_checkpointing),
        }
        loss = next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)
    del trainer, model
    gc.collect()
    steady = slice(1, None) if len(times) > 1 else slice(None)
    secs = sum(times[steady])
    return {"peak_mb": peak, "tokens_per_s": sum(tokens[steady]) / secs if secs else float("nan"),
            "tokens_per_step": sum(tokens) / max(len(tokens), 1), "steps": len(times), "train_s": wall,
            "loss": loss, **paths}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated: 1b, embedded, small "
                        "(default: 1b,embedded on CUDA, small without)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 12 CUDA, 2 CPU)")
    parser.add_argument("--batch", default=None,
                        help="rows per step, comma-separated for several (default: 64,256 CUDA, 4 CPU); runs at "
                             "the first are keyed name/method, the others name/method@bN")
    parser.add_argument("--rows", type=int, default=None,
                        help="training rows to tokenize (default: all on CUDA, 64 on CPU: only a few steps run)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--shapes", type=Path, default=None,
                        help="a --write-shapes dir: random weights of each model's shapes (no embedded GGUF needed)")
    parser.add_argument("--write-shapes", type=Path, default=None,
                        help="write the embedded model's tokenizer and config to this dir, then exit")
    parser.add_argument("--padded", action="store_true",
                        help="padding_free: false (rows padded to the batch's longest) instead of the default true")
    parser.add_argument("--seq", type=int, default=None,
                        help="rows of about this many tokens (Banking77 questions joined) instead of ~40-token rows")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="sft.gradient_checkpointing: true")
    parser.add_argument("--attention", default=None,
                        help="another attention implementation for the built model (flex_attention, eager)")
    parser.add_argument("--methods", default="lora,qlora", help="comma-separated (default: lora,qlora)")
    parser.add_argument("--profile", action="store_true", help="print each run's top operators (torch.profiler)")
    parser.add_argument("--default-sft", action="store_true",
                        help="also run configs/default.yaml's SFT in full on the embedded model's shapes")
    args = parser.parse_args(argv)
    if args.write_shapes:
        write_shapes(args.write_shapes)
        return {}
    for name in ("transformers", "trl", "datasets", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import torch

    cuda = torch.cuda.is_available()
    models = (args.models or ("1b,embedded" if cuda else "small")).split(",")
    steps = args.steps or (12 if cuda else 2)
    batches = [int(b) for b in (args.batch or ("64,256" if cuda else "4")).split(",")]
    peak, peak_note = device_peak_gflops()
    device = "cuda" if cuda else "cpu"
    print(f"device {device}: peak {peak_note}; {steps} steps x batch {batches}; torch {torch.__version__}",
          flush=True)
    every_row = (json.loads((args.shapes / ROWS_FILE).read_text()) if args.shapes
                 else training_rows(model_ref(models[0])))
    rows = every_row[: args.rows or (None if cuda else 64)]
    if args.seq:
        from transformers import AutoTokenizer

        rows = long_rows(every_row, args.seq, AutoTokenizer.from_pretrained(model_ref(models[0], args.shapes).path))
    results: dict[str, dict] = {}
    for name in models:
        ref = model_ref(name, args.shapes)
        n = base_params(ref.path)
        for batch, method in [(b, m) for b in batches for m in args.methods.split(",")]:
            key = f"{name}/{method}" + (f"@b{batch}" if batch != batches[0] else "")
            reason = skip_reason(method)
            if reason:
                results[key] = {"skipped": reason, "params": n}
                continue
            t0 = time.perf_counter()
            try:
                res = run_one(ref, rows, method, steps, batch, padding_free=not args.padded,
                              checkpointing=args.gradient_checkpointing, max_tokens=args.seq + 128 if args.seq else 96,
                              attention=args.attention, profile=args.profile)
            except torch.OutOfMemoryError:  # one size too big must not lose the table of the others
                gc.collect()
                torch.cuda.empty_cache()
                results[key] = {"skipped": f"out of device memory at batch {batch}", "params": n}
                print(f"  {key}: out of device memory", flush=True)
                continue
            results[key] = res = with_mfu(res, n, time.perf_counter() - t0, peak)
            print(f"  done {key}: {res['tokens_per_s']:.0f} tokens/s, {res['seconds']:.0f}s", flush=True)
    if args.default_sft:
        results["default-sft"] = full_default_sft(model_ref("embedded", args.shapes), every_row, peak)
    print_table(device, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "peak": peak_note, "results": results}, indent=1))
    return results


def with_mfu(res: dict, n: int, seconds: float, peak: float | None) -> dict:
    """A run's figures plus the base's size, its wall time with loading, and MFU (None: unknown peak)."""
    return res | {"params": n, "seconds": seconds,
                  "mfu": res["tokens_per_s"] * lora_flops_per_token(n) / (peak * 1e9) if peak else None}


def full_default_sft(ref, rows: list[dict], peak: float | None) -> dict:
    """configs/default.yaml's SFT in full (the pipeline's train_sft without its held-out evaluation)."""
    cfg = default_sft_config()
    t0 = time.perf_counter()
    res = with_mfu(run_sft(ref, rows, cfg), base_params(ref.path), time.perf_counter() - t0, peak)
    print(f"  done default-sft: {cfg.method}, {cfg.epochs} epochs x {len(rows)} rows, batch {cfg.batch_size}: "
          f"{res['steps']} steps, {res['train_s']:.0f}s training, {res['tokens_per_s']:.0f} tokens/s", flush=True)
    return res


def print_table(device: str, results: dict[str, dict]) -> None:
    print(f"\n{'run':22} {'device':6} {'params':>7} {'peak MB':>9} {'tokens/s':>9} {'MFU':>6} {'loss':>6}  "
          f"{'optim':18} {'bf16':5} {'attention':14} {'4bit':5} {'base':8} {'ckpt':5} {'tok/step':>8}")
    for key, r in results.items():
        if "skipped" in r:
            print(f"{key:22} {device:6} {r['params'] / 1e6:>6.0f}M  skipped: {r['skipped']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "-"
        print(f"{key:22} {device:6} {r['params'] / 1e6:>6.0f}M {r['peak_mb']:>9.0f} {r['tokens_per_s']:>9.0f} "
              f"{mfu:>6} {loss:>6}  {r['optim']:18} {r['bf16']!s:5} {r['attention']:14} {r['4bit']!s:5} "
              f"{r.get('base_dtype', '?'):8} {r.get('checkpointing', False)!s:5} {r['tokens_per_step']:>8.0f}")
    for key in [k for k in results if "/lora" in k]:
        lora, qlora = results[key], results.get(key.replace("/lora", "/qlora"), {})
        if lora.get("peak_mb") and qlora.get("peak_mb"):
            ratio = qlora["peak_mb"] / lora["peak_mb"]
            print(f"{key.replace('/lora', '')}: QLoRA peak / LoRA peak = {ratio:.2f} (goal <= {QLORA_GOAL}: "
                  f"{'met' if ratio <= QLORA_GOAL else 'not met'})")
    if "default-sft" in results:
        r = results["default-sft"]
        print(f"default-sft (configs/default.yaml's train_sft, no held-out eval): {r['steps']} steps in "
              f"{r['train_s']:.0f}s of training, {r['seconds']:.0f}s with loading")


if __name__ == "__main__":
    main()
