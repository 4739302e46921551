"""Evaluation throughput: batched vs one-by-one, on the same model and items, in one process.

    python bench/eval_throughput.py [--model tiny|default] [--rows N]
    python bench/eval_throughput.py --model tiny --rows 64 --mmlu-items 8 --metric token_f1

Measures examples/s for
  (a) the task metric: `tuneline.eval.task.score_task` (greedy generation + scoring) on the first N
      held-out Banking77 eval rows (`tuneline.data.validate.validate(DataConfig(), tok)`, split == "eval"),
      batch 32 vs batch 1;
  (b) lm-eval loglikelihood: MMLU cloze on 2 subjects x k items through `tuneline.eval.harness`
      (`run_benchmarks` with `EvaluateConfig(benchmark_batch_size=...)`), batch 4 vs batch 1.
      "ll s" is the time inside HFLM.loglikelihood alone (the rest is lm-eval building the tasks).
and asserts that each pair of runs gave the same per-item scores: batching must not change results.

--model default is SmolLM2-135M-Instruct (about 2 minutes on 2 CPU cores with the defaults);
--model tiny is the random tiny Llama (seconds; its answers are noise, but the speed-up shows).
Offline: HF_HUB_OFFLINE=1 is set before anything imports huggingface_hub.
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
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

SUBJECTS = ["marketing", "high_school_geography"]


def timed_loglikelihood():
    """Wrap HFLM.loglikelihood to add up the seconds spent inside it; returns the running total box."""
    from lm_eval.models.huggingface import HFLM

    spent = {"s": 0.0}
    inner = HFLM.loglikelihood

    def loglikelihood(self, requests, *args, **kwargs):
        kwargs["disable_tqdm"] = True  # lm-eval's progress bars would bury the table
        t0 = time.perf_counter()
        try:
            return inner(self, requests, *args, **kwargs)
        finally:
            spent["s"] += time.perf_counter() - t0

    HFLM.loglikelihood = loglikelihood
    return spent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--rows", type=int, default=16, help="Banking77 eval rows for the task metric")
    parser.add_argument("--mmlu-items", type=int, default=4, help="MMLU items per subject (2 subjects)")
    parser.add_argument("--metric", default="exact_match", help="task metric (tuneline.eval.scoring.METRICS)")
    parser.add_argument("--task-batch", type=int, default=32)
    parser.add_argument("--benchmark-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the fastest counts (noisy CPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)

    for name in ("lm-eval", "lm_eval", "datasets", "transformers", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import torch

    from tuneline.config import BaseModelConfig, DataConfig, EvaluateConfig, MMLUConfig
    from tuneline.data.generation import carried_length
    from tuneline.data.validate import validate
    from tuneline.eval.harness import run_benchmarks
    from tuneline.eval.scoring import check_metric
    from tuneline.eval.task import score_task
    from tuneline.model.base import load_model, load_tokenizer, prepare

    check_metric(args.metric)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    ref = prepare(BaseModelConfig(source="tiny") if args.model == "tiny" else BaseModelConfig())
    tok = load_tokenizer(ref)
    model = load_model(ref)
    model.eval()
    task = validate(DataConfig(), tok).task
    rows = task[task.split == "eval"].to_dict("records")[: args.rows]
    max_new = carried_length(task)  # data.max_new_tokens: auto, from the gold labels
    print(f"model {args.model} ({Path(ref.path).name}), torch threads {torch.get_num_threads()}, "
          f"device {next(model.parameters()).device}, load average {os.getloadavg()[0]:.1f}, "
          f"loaded in {time.perf_counter() - t_load:.1f}s", flush=True)

    def mmlu(batch: int, subjects: list[str], k: int):
        cfg = EvaluateConfig(benchmark_batch_size=batch, gsm8k=None,
                             mmlu=MMLUConfig(subjects=subjects, limit_per_subject=k))
        return run_benchmarks(model, tok, cfg)["mmlu"]

    # Warm-up (first-call costs: kernels, lm-eval's task machinery, the datasets CSV builder) so
    # neither side of a comparison pays them.
    score_task(model, tok, rows[:2], max_new, 2, args.metric)
    spent = timed_loglikelihood()
    mmlu(1, SUBJECTS[:1], 1)

    table = []

    def record(what, batch, n, seconds, score, extra=""):
        table.append((what, batch, n, seconds, n / seconds, score, extra))
        print(f"  done: {what} batch {batch}: {n} in {seconds:.1f}s", flush=True)

    # (a) task metric: generation + scoring.
    task_runs = {}
    for batch in (args.task_batch, 1):
        runs = [score_task(model, tok, rows, max_new, batch, args.metric) for _ in range(args.repeats)]
        assert all(x.per_item == runs[0].per_item for x in runs), "greedy generation is not deterministic"
        task_runs[batch] = r = min(runs, key=lambda x: x.seconds)
        record(f"task {args.metric} (generate {max_new} tok)", batch, r.n, r.seconds, r.score)
    a, b = task_runs[args.task_batch], task_runs[1]
    differ = sum(x != y for x, y in zip(a.predictions, b.predictions))
    assert a.per_item == b.per_item, f"batching changed task scores: {a.per_item} vs {b.per_item}"

    # (b) lm-eval loglikelihood: MMLU cloze.
    mmlu_runs = {}
    for batch in (args.benchmark_batch, 1):
        runs = []
        for _ in range(args.repeats):
            spent["s"] = 0.0
            runs.append((mmlu(batch, SUBJECTS, args.mmlu_items), spent["s"]))
        mmlu_runs[batch] = r, ll = min(runs, key=lambda x: x[0].seconds)
        record(f"lm-eval {r.name} {r.metric} (4 choices)", batch, r.n, r.seconds, r.score, f"{ll:.1f}")
    (m4, ll4), (m1, ll1) = mmlu_runs[args.benchmark_batch], mmlu_runs[1]
    assert m4.item_ids == m1.item_ids and m4.per_item == m1.per_item, \
        f"batching changed MMLU scores: {m4.per_item} vs {m1.per_item}"

    print(f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"fastest of {args.repeats} run(s) each")
    print(f"{'what':42} {'batch':>5} {'n':>4} {'seconds':>8} {'examples/s':>11} {'score':>6} {'ll s':>6}")
    for what, batch, n, seconds, rate, score, extra in table:
        print(f"{what:42} {batch:>5} {n:>4} {seconds:>8.1f} {rate:>11.2f} {score:>6.3f} {extra:>6}")
    print(f"ratio batched/one-by-one: task {b.seconds / a.seconds:.2f}x, "
          f"lm-eval {m1.seconds / m4.seconds:.2f}x end to end ({ll1 / ll4:.2f}x inside loglikelihood)")
    print(f"same per-item scores batched and one-by-one: task yes ({differ} of {a.n} generated texts differ), "
          f"MMLU yes ({m4.n} items)")


if __name__ == "__main__":
    main()
