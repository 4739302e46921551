"""Training throughput: tuneline's `train_sft` path vs a plain TRL SFTTrainer script, in one process.

    python bench/train_throughput.py [--model tiny|default] [--steps N] [--repeats R] [--threads T]
    python bench/train_throughput.py --only tuneline,plain-trl --steps 8 --repeats 2     # the issue-18 ratio
    python bench/train_throughput.py --profile --threads 1     # where a tuneline step's time goes
    python bench/train_throughput.py --levers --threads 1      # CPU levers, interleaved step by step

Same model (`--model default`: SmolLM2-135M-Instruct via `tuneline.model.base.prepare`; `tiny`: the
random tiny Llama), same data (the Banking77 training records of `tuneline.data.validate.validate`), same
number of optimizer steps, same batch size (8 rows), same shuffling seed. Runs:

  tuneline            `tuneline.train.sft.train` as the pipeline calls it: LoRA r16 all-linear, completion-only
                      loss, padding-free batches, bf16 autocast where the CPU/GPU has it
  tuneline-trl-loss   the same with `labelled_head: false` (TRL's loss path: the LM head on every position)
  tuneline-padded     the same with `padding_free: false` (pads to the longest row of each batch)
  tuneline-fp32       padding-free, bf16 off (separates the bf16 gain from the padding gain)
  plain-trl           the guide recipe, SFTTrainer with its default args: `SFTTrainer(model, args=SFTConfig(...),
                      peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))`
                      on `messages` rows (loss on every token), fp32, TRL's collator (pads to the longest row
                      of each batch), gradient checkpointing on, lr 2e-5. The ratios are against this run.
  plain-maxlen        the same, rows padded to max length (data.max_tokens = 96)
  plain-packing       the same with `packing=True` (best-fit-decreasing packing into 96-token bins)

tokens/s counts real (non-pad) tokens, steady state: the time of optimizer steps 2..N (step 1 pays
one-time kernel and allocator set-up), measured between the Trainer's on_step_begin and on_step_end.
tok/CPU-s divides the same tokens by the process's CPU seconds in those steps: on a shared machine it is the
figure that load does not move (with `--threads 1`: torch's idle threads spin and bill CPU time otherwise).
"end-to-end" is tokens over the whole `trainer.train()` (logging and the final checkpoint included).
Repeats run round robin (A B A B), so load changes hit every run; the table gives the median and the
min-max spread. Ratios are each run's median tokens/s over plain-trl's.

Share of peak: FLOPs/token = 4*N (LoRA on a frozen base: forward 2N + activation gradients 2N; N = the base's
parameters, 134.5M for SmolLM2-135M: 0.54 GFLOP/token) over the CPU's peak as `gpu_bench.cpu_peak_gflops`
estimates it from /proc/cpuinfo (here: 2 cores x 2.6 GHz x 64 bf16 FLOP/cycle with AVX512-BF16 = 332 GFLOP/s;
issue 18's target of 40 % is then ~133 GFLOP/s = ~246 tokens/s). Offline: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_bench: the peak and FLOPs model, in one place

BATCH = 8
PLAIN = "plain-trl"  # the run the ratios are against


class Meter:
    """Counts real and processed tokens per training step and times each optimizer step (wall and CPU)."""

    def __init__(self):
        self.steps: list[tuple[float, float, int, int]] = []  # (seconds, CPU seconds, real, processed tokens)
        self.real = self.processed = 0
        self.t0 = self.c0 = 0.0
        self.train_seconds = 0.0

    def reset(self):
        self.__init__()

    def count(self, inputs: dict):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else ids.numel()
        self.processed += ids.numel()

    def begin(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self._real0, self._proc0 = self.real, self.processed

    def end(self):
        self.steps.append((time.perf_counter() - self.t0, time.process_time() - self.c0,
                           self.real - self._real0, self.processed - self._proc0))

    def summary(self) -> dict:
        steady = self.steps[1:] or self.steps
        secs = sum(s[0] for s in steady)
        cpu = sum(s[1] for s in steady)
        real = sum(s[2] for s in steady)
        return {"steps": len(self.steps), "tokens_per_s": real / secs, "tokens_per_cpu_s": real / cpu if cpu else 0.0,
                "seconds_per_step": secs / len(steady), "real_tokens": self.real, "processed_tokens": self.processed,
                "padding_share": 1 - self.real / self.processed if self.processed else 0.0,
                "end_to_end_tokens_per_s": self.real / self.train_seconds if self.train_seconds else float("nan")}


def instrument(meter: Meter):
    """Patch SFTTrainer (for every run in this process) to feed the meter; the numbers are untouched."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            meter.begin()

        def on_step_end(self, args, state, control, **kwargs):
            meter.end()

    inner_step, inner_train = SFTTrainer.training_step, SFTTrainer.train

    def training_step(self, model, inputs, *args, **kwargs):
        meter.count(inputs)
        return inner_step(self, model, inputs, *args, **kwargs)

    def train(self, *args, **kwargs):
        self.add_callback(StepTimer())
        t0 = time.perf_counter()
        try:
            return inner_train(self, *args, **kwargs)
        finally:
            meter.train_seconds = time.perf_counter() - t0

    SFTTrainer.training_step, SFTTrainer.train = training_step, train


def run_tuneline(ref, records, steps: int, **overrides) -> None:
    from tuneline.config import SFTConfig
    from tuneline.train import checkpoints
    from tuneline.train.sft import train

    cfg = SFTConfig(max_steps=steps, batch_size=BATCH, logging_steps=max(steps, 1), **overrides)
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-") as tmp:
        checkpoints.CHECKPOINT_ROOT = Path(tmp) / "ckpt"  # fresh: never resume another run's checkpoint
        train(ref, records, cfg, Path(tmp) / "adapter")


def run_plain(ref, records, steps: int, max_length: int, mode: str) -> None:
    """The guide recipe, as a user would write it (TRL defaults except what the recipe sets)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneline.data.records import messages

    tok = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    data = Dataset.from_list([{"messages": messages(r)} for r in records])
    extra = {"packing": True} if mode == "packing" else {"pad_to_multiple_of": max_length} if mode == "max_length" else {}
    with tempfile.TemporaryDirectory(prefix="plain-bench-") as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=BATCH, bf16=False,
                         max_length=max_length, seed=0, data_seed=0, report_to=[], logging_steps=max(steps, 1),
                         use_cpu=not torch.cuda.is_available(), disable_tqdm=True, **extra)
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft).train()


# --- where the time goes, and the levers ---------------------------------------------------------------------


def step_batches(ref, records, n: int, **overrides):
    """tuneline's SFT trainer (as train_sft builds it) and its first n collated batches, with the seconds
    the collation took."""
    from tuneline.config import SFTConfig
    from tuneline.train import checkpoints
    from tuneline.train.sft import build_trainer

    cfg = SFTConfig(max_steps=100, batch_size=BATCH, **overrides)
    checkpoints.CHECKPOINT_ROOT = Path(tempfile.mkdtemp(prefix="tuneline-bench-")) / "ckpt"
    trainer = build_trainer(ref, records, cfg, checkpoints.CHECKPOINT_ROOT, max_tokens=96)
    trainer.current_gradient_accumulation_steps = 1
    it = iter(trainer.get_train_dataloader())
    c0 = time.thread_time()
    batches = [next(it) for _ in range(n)]
    return trainer, batches, (time.thread_time() - c0) / n


def _op_category(name: str, shapes: list) -> str:
    """An aten op of a LoRA step -> the part of the model it belongs to (shapes tell the LoRA branch, rank 16,
    and the LM head, vocabulary-wide, from the base linears)."""
    dims = {d for s in shapes or [] if isinstance(s, list) for d in s}
    if "attention" in name or "sdpa" in name:
        return "attention"
    if any(k in name for k in ("mm", "linear", "matmul", "addmm")):
        return "LM head" if any(d > 30000 for d in dims) else "LoRA branches" if 16 in dims else "base linears"
    if any(k in name for k in ("_foreach", "adam", "lerp", "sqrt")):
        return "optimizer"
    if any(k in name for k in ("softmax", "nll", "cross_entropy", "log_softmax", "entropy", "logsumexp")):
        return "loss + metrics"
    if any(k in name for k in ("to", "copy", "_to_copy", "clone", "contiguous")):
        return "dtype casts + copies"
    return "other ops (norms, rope, SiLU, adds)"


def profile(ref, records, steps: int) -> None:
    """CPU time per phase of tuneline's step (collation, forward+loss, backward, optimizer) and, from
    torch.profiler, the share of each part of the model; Python overhead is what no aten op accounts for."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer, batches, collate_s = step_batches(ref, records, steps + 1)
    model, opt = trainer.model, torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-4)
    phases = {"collation": collate_s * steps, "forward + loss": 0.0, "backward": 0.0, "optimizer": 0.0}

    def one(batch, clock=time.thread_time):
        c0 = clock()
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, batch)
        c1 = clock()
        loss.backward()
        c2 = clock()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return c1 - c0, c2 - c1, clock() - c2

    model.train()
    one(batches[0])  # set-up
    w0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for b in batches[1:]:
            f, bw, o = one(b)
            phases["forward + loss"] += f
            phases["backward"] += bw
            phases["optimizer"] += o
    wall = time.perf_counter() - w0
    total = sum(phases.values())
    tokens = sum(b["input_ids"].numel() for b in batches[1:])
    print(f"\nprofile: {steps} steps, {tokens / steps:.0f} tokens/step, {torch.get_num_threads()} thread(s), "
          f"{tokens / total:.0f} tokens per CPU-second (profiler on)")
    for k, v in phases.items():
        print(f"  {k:32} {v / steps:7.3f} CPU-s/step {v / total:6.1%}")
    # The profiler's op times are wall times (a preempted op counts its wait): shares of the profiled wall
    # time, which is what this table gives; Python overhead is the wall time no aten op accounts for.
    cats: dict[str, float] = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        cat = _op_category(ev.key, ev.input_shapes)
        cats[cat] = cats.get(cat, 0.0) + ev.self_cpu_time_total / 1e6
    cats["Python + framework overhead"] = max(wall - sum(cats.values()), 0.0)
    print(f"  by part (share of {wall / steps:.2f} s wall per profiled step; aten self time):")
    for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"    {k:36} {v / max(wall, sum(cats.values())):6.1%}")


LEVERS = {  # name: SFTConfig overrides on top of tuneline's defaults
    "tuneline": {},
    "trl-loss": {"labelled_head": False},  # TRL's loss path: the LM head on every position
    "fp32": {"bf16": "false"},
    "padded": {"padding_free": False},
}


def levers(ref, records, steps: int, rounds: int, names: list[str] | None) -> None:
    """Each lever as its own trainer, built as train_sft builds it (same seed: same LoRA init, same batches),
    stepped in turn through Trainer.training_step: lever A on batch i, then B on batch i, ..., so load hits all
    alike. The loss of the last round tells whether the curve stays the same. CPU seconds of this thread are
    the measure (run with --threads 1)."""
    import torch

    chosen = {k: v for k, v in LEVERS.items() if k == "tuneline" or not names or k in names}
    built = {k: step_batches(ref, records, steps, **v)[:2] for k, v in chosen.items()}
    opts = {k: torch.optim.AdamW([p for p in t.model.parameters() if p.requires_grad], lr=1e-3)
            for k, (t, _) in built.items()}
    rates: dict[str, list[float]] = {k: [] for k in chosen}
    first: dict[str, float] = {}
    losses: dict[str, list[float]] = {k: [] for k in chosen}
    for rnd in range(rounds):
        for i in range(steps):
            for k, (trainer, batches) in built.items():
                trainer.model.train()
                batch = batches[i]
                c0 = time.thread_time()
                loss = trainer.training_step(trainer.model, dict(batch))
                opts[k].step()
                opts[k].zero_grad(set_to_none=True)
                seconds = time.thread_time() - c0
                mask = batch.get("attention_mask")
                tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
                if rnd == 0 and i == 0:
                    first[k] = seconds  # set-up
                else:
                    rates[k].append(tokens / seconds)
                losses[k].append(float(loss))
    print(f"\nlevers: {steps} batches x {rounds} round(s), interleaved; real tokens per CPU-second of "
          f"{torch.get_num_threads()} thread(s), median [min-max] over steps; loss = mean over the last round")
    ref_median = statistics.median(rates["tuneline"])
    for k in chosen:
        med = statistics.median(rates[k])
        print(f"  {k:12} {med:7.1f} [{min(rates[k]):6.1f}-{max(rates[k]):6.1f}] x{med / ref_median:5.2f}  "
              f"first step {first[k]:5.1f} CPU-s  loss {statistics.mean(losses[k][-steps:]):.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (batch 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--only", default=None, help="comma-separated run names to do (default: all)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all runs (round robin, so load changes hit every run); median and spread")
    parser.add_argument("--profile", action="store_true", help="where tuneline's step time goes, then stop")
    parser.add_argument("--levers", nargs="?", const="", default=None,
                        help="compare CPU levers step by step (optionally a comma-separated subset), then stop")
    args = parser.parse_args(argv)
    for name in ("transformers", "trl", "datasets", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import torch
    from gpu_bench import base_params, cpu_peak_gflops, lora_flops_per_token

    from tuneline.config import BaseModelConfig, DataConfig
    from tuneline.data.validate import validate
    from tuneline.model.base import load_tokenizer, prepare
    from tuneline.model.precision import use_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = prepare(BaseModelConfig(source="tiny") if args.model == "tiny" else BaseModelConfig())
    data_cfg = DataConfig()
    task = validate(data_cfg, load_tokenizer(ref)).task
    records = task[task.split == "train"].to_dict("records")
    peak, peak_note = cpu_peak_gflops()
    flops = lora_flops_per_token(base_params(ref.path))
    print(f"model {args.model} ({Path(ref.path).name}), {len(records)} Banking77 training rows, {args.steps} steps x "
          f"batch {BATCH}, torch threads {torch.get_num_threads()}, bf16 autocast here: {use_bf16('auto')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
          f"peak: {peak_note}; FLOPs/token 4N = {flops / 1e9:.3f} GFLOP; 40 % of peak = "
          f"{0.4 * peak * 1e9 / flops:.0f} tokens/s", flush=True)
    if args.profile:
        return profile(ref, records, args.steps)
    if args.levers is not None:
        return levers(ref, records, args.steps, args.repeats, [x for x in args.levers.split(",") if x] or None)

    meter = Meter()
    instrument(meter)
    runs = {
        "tuneline": lambda: run_tuneline(ref, records, args.steps),
        "tuneline-trl-loss": lambda: run_tuneline(ref, records, args.steps, labelled_head=False),
        "tuneline-padded": lambda: run_tuneline(ref, records, args.steps, padding_free=False),
        "tuneline-fp32": lambda: run_tuneline(ref, records, args.steps, bf16="false"),
        PLAIN: lambda: run_plain(ref, records, args.steps, data_cfg.max_tokens, "longest"),
        "plain-maxlen": lambda: run_plain(ref, records, args.steps, data_cfg.max_tokens, "max_length"),
        "plain-packing": lambda: run_plain(ref, records, args.steps, data_cfg.max_tokens, "packing"),
    }
    only = [x.strip() for x in args.only.split(",")] if args.only else list(runs)
    unknown = [x for x in only if x not in runs]
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; the runs are {', '.join(runs)}")
    rounds: dict[str, list[dict]] = {}
    for rnd in range(args.repeats):
        for name in only:
            meter.reset()
            t0 = time.perf_counter()
            runs[name]()
            res = meter.summary()
            rounds.setdefault(name, []).append(res)
            print(f"  done: {name} (round {rnd + 1}): {res['tokens_per_s']:.0f} tokens/s, "
                  f"{res['tokens_per_cpu_s']:.0f} tok/CPU-s ({time.perf_counter() - t0:.0f}s with loading)", flush=True)
    report(rounds, args, peak, flops)


def report(rounds: dict[str, list[dict]], args, peak: float, flops: float) -> None:
    med = {n: statistics.median(r["tokens_per_s"] for r in rs) for n, rs in rounds.items()}
    cpu = {n: statistics.median(r["tokens_per_cpu_s"] for r in rs) for n, rs in rounds.items()}
    print(f"\nload average now {os.getloadavg()[0]:.1f}; tokens/s: real tokens, steps 2..{args.steps}, "
          f"median [min-max] of {args.repeats} round(s); % peak = tokens/s x {flops / 1e9:.3f} GFLOP / {peak:.0f} GFLOP/s")
    print(f"{'run':16} {'tokens/s':>20} {'% peak':>7} {'tok/CPU-s':>10} {'s/step':>7} {'end-to-end':>10} "
          f"{'real tok':>9} {'padding':>8} {'vs ' + PLAIN:>14} {'(CPU-s)':>8}")
    for name, rs in rounds.items():
        tps = [r["tokens_per_s"] for r in rs]
        last = rs[-1]
        ratio = f"{med[name] / med[PLAIN]:.2f}x" if PLAIN in med else "-"
        cpu_ratio = f"{cpu[name] / cpu[PLAIN]:.2f}x" if cpu.get(PLAIN) else "-"
        print(f"{name:16} {med[name]:>7.0f} [{min(tps):>4.0f}-{max(tps):>4.0f}] {med[name] * flops / 1e9 / peak:>7.1%} "
              f"{cpu[name]:>10.0f} {last['seconds_per_step']:>7.2f} "
              f"{last['end_to_end_tokens_per_s']:>10.0f} {last['real_tokens']:>9} {last['padding_share']:>8.1%} {ratio:>14} {cpu_ratio:>8}")


if __name__ == "__main__":
    main()
