"""Evaluation throughput: batched vs one-by-one, on the same model and items, in one process.

    python bench/eval_throughput.py [--model tiny|default] [--rows N]
    python bench/eval_throughput.py --model tiny --rows 64 --mmlu-items 8 --metric token_f1
    python bench/eval_throughput.py --parts candidates --rows 64 --candidates 2     # issue 18's figure
    python bench/eval_throughput.py --parts gguf --gguf model-Q8_0.gguf --ppl-texts 30  # a GGUF file's perplexity

Measures examples/s for
  (a) the task metric: `tuneline.eval.task.score_task` (greedy generation + scoring) on the first N
      held-out Banking77 eval rows (`tuneline.data.validate.validate(DataConfig(), tok)`, split == "eval"),
      batch 32 vs batch 1;
  (b) lm-eval loglikelihood: MMLU cloze on 2 subjects x k items through `tuneline.eval.harness`
      (`run_benchmarks` with `EvaluateConfig(benchmark_batch_size=...)`), batch 4 vs batch 1.
      "ll s" is the time inside HFLM.loglikelihood alone (the rest is lm-eval building the tasks).
  (c) candidates: N LoRA adapters (the default SFT recipe's LoRA, freshly initialised with random B so each
      answers differently) scored one after another (score_task + perplexity per adapter, as evaluate did)
      vs all in one pass (tuneline.eval.candidates: PEFT mixed-adapter batches), on the same rows and
      --ppl-texts general texts; items/s counts rows x candidates.
  (d) gguf: a GGUF file's perplexity on --ppl-texts general texts (`tuneline.eval.perplexity.gguf_perplexity`,
      llama.cpp), its log-softmax normalizer by numpy's float64 logaddexp.reduce (before) vs torch's float32
      logsumexp (`gguf_lm.picked_logprobs`, now), same llama.cpp logits; per-text NLLs within 1e-4 per token.
and asserts that each pair of runs gave the same per-item scores: batching must not change results
(candidates: the same greedy answers, NLLs within 1e-4).

Measured 2026-12-03, --parts candidates --rows 64 --candidates 2 --ppl-texts 16, default model, 1 torch thread
(OMP_NUM_THREADS=1) on a 2-core machine at load average ~10: one by one 0.33 rows/s (task) and 0.31 texts/s
(ppl), one pass 0.45 and 0.46: 1.37x task, 1.46x ppl, 1.39x both. On CPU the prompts' prefill dominates and
costs the same either way (each row still goes through every base weight); the pass saves the per-step
overhead of a second generation loop.

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
    parser.add_argument("--parts", default="task,mmlu,candidates", help="which of task, mmlu, candidates, gguf to run")
    parser.add_argument("--gguf", type=Path, help="a GGUF file of this model for (d)")
    parser.add_argument("--candidates", type=int, default=2, help="LoRA adapters for (c)")
    parser.add_argument("--ppl-texts", type=int, default=16, help="general texts for (c)'s perplexity")
    args = parser.parse_args(argv)

    for name in ("lm-eval", "lm_eval", "datasets", "transformers", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import torch

    from tuneline.config import BaseModelConfig, DataConfig, EvaluateConfig, MMLUConfig
    from tuneline.data.generation import carried_length
    from tuneline.data.validate import validate
    from tuneline.eval.harness import run_benchmarks
    from tuneline.eval.perplexity import general_texts
    from tuneline.eval.scoring import check_metric
    from tuneline.eval.task import score_task
    from tuneline.model.base import load_model, load_tokenizer, prepare

    check_metric(args.metric)
    parts = set(args.parts.split(","))
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
    if "mmlu" in parts:
        spent = timed_loglikelihood()
        mmlu(1, SUBJECTS[:1], 1)

    table = []
    ratios, same = [], []

    def record(what, batch, n, seconds, score, extra=""):
        table.append((what, batch, n, seconds, n / seconds, score, extra))
        print(f"  done: {what} batch {batch}: {n} in {seconds:.1f}s", flush=True)

    # (a) task metric: generation + scoring.
    if "task" in parts:
        task_runs = {}
        for batch in (args.task_batch, 1):
            runs = [score_task(model, tok, rows, max_new, batch, args.metric) for _ in range(args.repeats)]
            assert all(x.per_item == runs[0].per_item for x in runs), "greedy generation is not deterministic"
            task_runs[batch] = r = min(runs, key=lambda x: x.seconds)
            record(f"task {args.metric} (generate {max_new} tok)", batch, r.n, r.seconds, r.score)
        a, b = task_runs[args.task_batch], task_runs[1]
        differ = sum(x != y for x, y in zip(a.predictions, b.predictions))
        assert a.per_item == b.per_item, f"batching changed task scores: {a.per_item} vs {b.per_item}"
        ratios.append(f"task {b.seconds / a.seconds:.2f}x")
        same.append(f"task yes ({differ} of {a.n} generated texts differ)")

    # (b) lm-eval loglikelihood: MMLU cloze.
    if "mmlu" in parts:
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
        ratios.append(f"lm-eval {m1.seconds / m4.seconds:.2f}x end to end ({ll1 / ll4:.2f}x inside loglikelihood)")
        same.append(f"MMLU yes ({m4.n} items)")

    # (c) several LoRA candidates: one after another vs one mixed-adapter pass.
    if "candidates" in parts:
        peft, names = random_loras(model, ref, args.candidates)
        texts = general_texts(EvaluateConfig())[: args.ppl_texts]
        runs = [candidate_passes(peft, tok, rows, names, texts, max_new, args) for _ in range(args.repeats)]
        (seq, seq_s, seq_ppl_s), (mix, mix_s, mix_ppl_s) = (min((r[k] for r in runs), key=lambda x: x[1] + x[2])
                                                            for k in (0, 1))
        n = len(rows) * len(names)
        record(f"{len(names)} candidates one by one (task)", args.task_batch, n, seq_s, seq[names[-1]][0].score)
        record(f"{len(names)} candidates one pass (task)", args.task_batch, n, mix_s, mix[names[-1]][0].score)
        t = len(texts) * len(names)
        record(f"{len(names)} candidates one by one (ppl)", 8, t, seq_ppl_s, seq[names[-1]][1].ppl)
        record(f"{len(names)} candidates one pass (ppl)", 8, t, mix_ppl_s, mix[names[-1]][1].ppl)
        for name in names:
            assert seq[name][0].predictions == mix[name][0].predictions, f"{name}: one pass changed the answers"
            worst = max(abs(x - y) for x, y in zip(seq[name][1].per_item, mix[name][1].per_item))
            assert worst <= 1e-4, f"{name}: one pass changed an NLL by {worst}"
        assert seq[names[0]][0].predictions != seq[names[-1]][0].predictions, "the adapters answer alike"
        ratios.append(f"candidates task {seq_s / mix_s:.2f}x, ppl {seq_ppl_s / mix_ppl_s:.2f}x, "
                      f"both {(seq_s + seq_ppl_s) / (mix_s + mix_ppl_s):.2f}x")
        same.append(f"candidates yes ({len(rows)} rows x {len(names)} adapters, same greedy answers)")

    # (d) a GGUF file's perplexity: the two log-softmax normalizers on the same llama.cpp logits.
    if "gguf" in parts:
        ppl_runs = gguf_normalizers(args.gguf, tok, general_texts(EvaluateConfig())[: args.ppl_texts])
        for label, r in ppl_runs.items():
            record(f"GGUF perplexity, {label}", 1, len(r.per_item), r.seconds, r.ppl)
        old, new = ppl_runs.values()
        worst = max(abs(x - y) for x, y in zip(old.per_item, new.per_item))
        assert worst <= 1e-4, f"the torch normalizer changed a text's NLL per token by {worst}"
        ratios.append(f"GGUF perplexity {old.seconds / new.seconds:.2f}x")
        same.append(f"GGUF perplexity yes ({len(new.per_item)} texts, worst {worst:.1e} nats/token)")

    print(f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"fastest of {args.repeats} run(s) each")
    print(f"{'what':42} {'batch':>5} {'n':>4} {'seconds':>8} {'examples/s':>11} {'score':>6} {'ll s':>6}")
    for what, batch, n, seconds, rate, score, extra in table:
        print(f"{what:42} {batch:>5} {n:>4} {seconds:>8.1f} {rate:>11.2f} {score:>6.3f} {extra:>6}")
    print(f"ratio batched/one-by-one: {', '.join(ratios)}")
    print(f"same per-item scores batched and one-by-one: {', '.join(same)}")


def gguf_normalizers(path: Path, tok, texts: list[str]) -> dict:
    """gguf_perplexity with numpy's float64 logaddexp.reduce normalizer, then with the current one."""
    import numpy as np

    from tuneline.eval import gguf_lm
    from tuneline.eval.perplexity import encode_texts, gguf_perplexity

    def numpy_picked(rows, ids):
        wide = rows.astype(np.float64)
        return wide[np.arange(len(ids)), ids] - np.logaddexp.reduce(wide, axis=1)

    ids = encode_texts(tok, texts)
    now = gguf_lm.picked_logprobs
    gguf_lm.picked_logprobs = numpy_picked
    try:
        before = gguf_perplexity(path, ids)
    finally:
        gguf_lm.picked_logprobs = now
    return {"numpy logaddexp (before)": before, "torch logsumexp (now)": gguf_perplexity(path, ids)}


def random_loras(model, ref, count: int):
    """`count` LoRA adapters of the default SFT recipe on `model`, freshly initialised with random B (PEFT
    starts B at zero, which would answer like the base), saved and loaded back as evaluate loads them."""
    import tempfile

    import torch
    from peft import get_peft_model

    from tuneline.config import SFTConfig
    from tuneline.model.adapters import load_adapter
    from tuneline.model.base import load_model
    from tuneline.train.methods import lora_config

    tmp = Path(tempfile.mkdtemp(prefix="tuneline-bench-loras-"))
    config = lora_config(SFTConfig(), model.config.num_hidden_layers)
    names = [f"lora{i}" for i in range(count)]
    for i, name in enumerate(names):
        torch.manual_seed(i)
        fresh = get_peft_model(load_model(ref), config)
        for key, p in fresh.named_parameters():
            if "lora_B" in key:
                p.data.normal_(0, 0.02)
        fresh.save_pretrained(tmp / name)
    peft = model
    for name in names:
        peft = load_adapter(peft, tmp / name, adapter_name=name)
    return peft.eval(), names


def candidate_passes(peft, tok, rows, names, texts, max_new, args):
    """(per-candidate results, task s, perplexity s) one adapter at a time, then the same in one mixed pass."""
    from tuneline.eval.candidates import score_candidates
    from tuneline.eval.perplexity import perplexities, perplexity
    from tuneline.eval.task import score_task

    seq, task_s, ppl_s = {}, 0.0, 0.0
    for name in names:
        peft.set_adapter(name)
        t0 = time.perf_counter()
        res = score_task(peft, tok, rows, max_new, args.task_batch, args.metric)
        t1 = time.perf_counter()
        seq[name] = (res, perplexity(peft, tok, texts, 8))
        task_s, ppl_s = task_s + t1 - t0, ppl_s + time.perf_counter() - t1
    t0 = time.perf_counter()
    task = score_candidates(peft, tok, rows, names, max_new, args.task_batch, args.metric)
    t1 = time.perf_counter()
    ppl = perplexities(peft, tok, texts, names, 8)
    mix = {name: (task[name], p) for name, p in zip(names, ppl)}
    return (seq, task_s, ppl_s), (mix, t1 - t0, time.perf_counter() - t1)


if __name__ == "__main__":
    main()
