"""Training throughput: tuneline's `train_sft` path vs a plain TRL SFTTrainer script, in one process.

    python bench/train_throughput.py [--model tiny|default] [--steps N] [--repeats R]
    python bench/train_throughput.py --model tiny --steps 8

Same model (`--model default`: SmolLM2-135M-Instruct via `tuneline.model.base.prepare`; `tiny`: the
random tiny Llama), same data (the Banking77 training records of `tuneline.data.validate.validate`), same
number of optimizer steps, same batch size (8 rows), same shuffling seed. Runs:

  tuneline            `tuneline.train.sft.train` as the pipeline calls it: LoRA r16 all-linear, completion-only
                      loss, padding-free batches, bf16 autocast where the CPU/GPU has it
  tuneline, padded    the same with `padding_free: false` (pads to the longest row of each batch)
  tuneline, fp32      padding-free, bf16 off (separates the bf16 gain from the padding gain)
  plain, max-length   the guide recipe: `SFTTrainer(model, args=SFTConfig(...), peft_config=LoraConfig(r=16,
                      lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))` on `messages` rows
                      (loss on every token), fp32, rows padded to max length (data.max_tokens = 96),
                      otherwise TRL's defaults (gradient checkpointing on, lr 2e-5)
  plain, TRL padding  the same with TRL's default collator (pads to the longest row of each batch)
  plain, packing      the same with `packing=True` (TRL's best-fit-decreasing packing into 96-token
                      bins, padding-free)

tokens/s counts real (non-pad) tokens, steady state: the time of optimizer steps 2..N (step 1 pays
one-time kernel and allocator set-up), measured between the Trainer's on_step_begin and on_step_end.
"end-to-end" is tokens over the whole `trainer.train()` (logging and the final checkpoint included).
Ratios are tuneline's tokens/s over the plain run's. Offline: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

BATCH = 8


class Meter:
    """Counts real and processed tokens per training step and times each optimizer step."""

    def __init__(self):
        self.steps: list[tuple[float, int, int]] = []  # (seconds, real tokens, processed tokens)
        self.real = self.processed = 0
        self.t0 = 0.0
        self.train_seconds = 0.0

    def reset(self):
        self.__init__()

    def count(self, inputs: dict):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else ids.numel()
        self.processed += ids.numel()

    def begin(self):
        self.t0 = time.perf_counter()
        self._real0, self._proc0 = self.real, self.processed

    def end(self):
        self.steps.append((time.perf_counter() - self.t0, self.real - self._real0, self.processed - self._proc0))

    def summary(self) -> dict:
        steady = self.steps[1:] or self.steps
        secs = sum(s for s, _, _ in steady)
        real = sum(r for _, r, _ in steady)
        return {"steps": len(self.steps), "tokens_per_s": real / secs, "seconds_per_step": secs / len(steady),
                "real_tokens": self.real, "processed_tokens": self.processed,
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
    import tuneline.train.checkpoints as checkpoints
    from tuneline.config import SFTConfig
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (batch 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--only", default=None, help="comma-separated run names to do (default: all)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all runs (round robin, so load changes hit every run); the fastest counts")
    args = parser.parse_args(argv)
    for name in ("transformers", "trl", "datasets", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import torch

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
    print(f"model {args.model} ({Path(ref.path).name}), {len(records)} Banking77 training rows, {args.steps} steps x "
          f"batch {BATCH}, torch threads {torch.get_num_threads()}, bf16 autocast here: {use_bf16('auto')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    meter = Meter()
    instrument(meter)
    runs = {
        "tuneline": lambda: run_tuneline(ref, records, args.steps),
        "tuneline, padded": lambda: run_tuneline(ref, records, args.steps, padding_free=False),
        "tuneline, fp32": lambda: run_tuneline(ref, records, args.steps, bf16="false"),
        "plain, max-length": lambda: run_plain(ref, records, args.steps, data_cfg.max_tokens, "max_length"),
        "plain, TRL padding": lambda: run_plain(ref, records, args.steps, data_cfg.max_tokens, "longest"),
        "plain, packing": lambda: run_plain(ref, records, args.steps, data_cfg.max_tokens, "packing"),
    }
    only = [x.strip() for x in args.only.split(",")] if args.only else list(runs)
    results: dict[str, dict] = {}
    for rnd in range(args.repeats):
        for name in only:
            meter.reset()
            t0 = time.perf_counter()
            runs[name]()
            res = meter.summary()
            if name not in results or res["tokens_per_s"] > results[name]["tokens_per_s"]:
                results[name] = res
            print(f"  done: {name} (round {rnd + 1}): {res['tokens_per_s']:.0f} tokens/s "
                  f"({time.perf_counter() - t0:.0f}s with loading)", flush=True)

    print(f"\nload average now {os.getloadavg()[0]:.1f}; tokens/s: real tokens, steps 2..{args.steps}, "
          f"fastest of {args.repeats} round(s)")
    print(f"{'run':20} {'tokens/s':>9} {'s/step':>7} {'end-to-end tok/s':>16} {'real tok':>9} {'processed':>9} {'padding':>8}")
    for name, r in results.items():
        print(f"{name:20} {r['tokens_per_s']:>9.0f} {r['seconds_per_step']:>7.2f} {r['end_to_end_tokens_per_s']:>16.0f} "
              f"{r['real_tokens']:>9} {r['processed_tokens']:>9} {r['padding_share']:>8.1%}")
    ours = [n for n in results if n.startswith("tuneline")]
    plains = [n for n in results if n.startswith("plain")]
    if ours and plains:
        print("\nratios (tuneline tokens/s over plain tokens/s):")
        print(f"{'':20} " + " ".join(f"{p:>20}" for p in plains))
        for o in ours:
            print(f"{o:20} " + " ".join(f"{results[o]['tokens_per_s'] / results[p]['tokens_per_s']:>19.2f}x" for p in plains))


if __name__ == "__main__":
    main()
