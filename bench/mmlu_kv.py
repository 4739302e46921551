"""MMLU with the question's KV cache reused for its four answers vs lm-eval's HFLM, in one process.

    python bench/mmlu_kv.py                       # embedded SmolLM2-135M, default MMLU section (4 x 25 items)
    python bench/mmlu_kv.py --model tiny --limit 3 --repeats 1

Runs `tuneline.eval.mmlu.run_mmlu` (the path `tuneline evaluate` takes) on the same model and items twice:
through lm-eval's own HFLM (`evaluate.mmlu.reuse_context: false`, the reference) and through
`tuneline.eval.harness.SharedContextHFLM` (the default). Prints items/s for each, the ratio, and checks
that every (item, answer) log-likelihood agrees within 1e-4 and every item's acc and acc_norm are equal.
Each setting runs --repeats times alternately (the machine is shared; the fastest run counts).
Offline: HF_HUB_OFFLINE=1 is set before anything imports huggingface_hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

TOLERANCE = 1e-4


def scored_run(model, tok, cfg, reuse: bool):
    """run_mmlu through one LM kind; returns the result and {request args: (loglikelihood, is_greedy)}."""
    from tuneline.eval.harness import _lm
    from tuneline.eval.mmlu import run_mmlu

    lm = _lm(model, tok, cfg.benchmark_batch_size, reuse_context=reuse)
    answers: dict = {}
    inner = lm.loglikelihood

    def loglikelihood(requests, disable_tqdm: bool = False):
        out = inner(requests, disable_tqdm=True)
        answers.update({r.args: a for r, a in zip(requests, out, strict=True)})
        return out

    lm.loglikelihood = loglikelihood  # lm-eval calls getattr(lm, "loglikelihood")
    return run_mmlu(lm, cfg.mmlu, cfg.seed), answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="default")
    parser.add_argument("--limit", type=int, default=None, help="items per subject (default: the config's, 25)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating; the fastest counts")
    args = parser.parse_args(argv)
    for name in ("lm-eval", "lm_eval", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import torch

    from tuneline.config import BaseModelConfig, EvaluateConfig, MMLUConfig
    from tuneline.model.base import load_model, load_tokenizer, prepare

    ref = prepare(BaseModelConfig(source="tiny") if args.model == "tiny" else BaseModelConfig())
    tok, model = load_tokenizer(ref), load_model(ref).eval()
    mmlu = MMLUConfig() if args.limit is None else MMLUConfig(limit_per_subject=args.limit)
    cfg = EvaluateConfig(mmlu=mmlu, gsm8k=None)
    print(f"model {args.model} ({Path(ref.path).name}), torch threads {torch.get_num_threads()}, "
          f"MMLU {mmlu.format} {len(mmlu.subjects)} subjects x {mmlu.limit_per_subject} items, "
          f"{mmlu.num_fewshot}-shot, batch {cfg.benchmark_batch_size}, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    # Warm-up: first-call costs (lm-eval's task machinery, the CSV builder, kernels) paid by neither side.
    scored_run(model, tok, EvaluateConfig(mmlu=MMLUConfig(subjects=mmlu.subjects[:1], limit_per_subject=1),
                                          gsm8k=None), reuse=False)

    runs: dict[bool, list] = {False: [], True: []}
    for _ in range(args.repeats):
        for reuse in (False, True):
            runs[reuse].append(scored_run(model, tok, cfg, reuse))
            r = runs[reuse][-1][0]
            print(f"  {'shared context' if reuse else 'lm-eval HFLM':14}: {r.n} items in {r.seconds:.1f}s", flush=True)
    (ref_result, ref_ll), (fast_result, fast_ll) = (min(runs[k], key=lambda x: x[0].seconds) for k in (False, True))

    assert fast_ll.keys() == ref_ll.keys(), "the two paths scored different requests"
    worst = max(abs(fast_ll[k][0] - ref_ll[k][0]) for k in ref_ll)
    greedy_differ = sum(fast_ll[k][1] != ref_ll[k][1] for k in ref_ll)
    assert fast_result.item_ids == ref_result.item_ids
    differ = sum(a != b for a, b in zip(fast_result.per_item, ref_result.per_item))

    print(f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; fastest of {args.repeats} run(s) each")
    print(f"{'path':16} {'items':>5} {'seconds':>8} {'items/s':>8} {mmlu.format + ' ' + ref_result.metric:>16}")
    for name, r in (("lm-eval HFLM", ref_result), ("shared context", fast_result)):
        print(f"{name:16} {r.n:>5} {r.seconds:>8.1f} {r.n / r.seconds:>8.2f} {r.score:>16.3f}")
    print(f"ratio shared context / lm-eval HFLM: {ref_result.seconds / fast_result.seconds:.2f}x items/s")
    print(f"per request ({len(ref_ll)} item-answer pairs): max |loglikelihood difference| {worst:.2e} "
          f"(tolerance {TOLERANCE:g}), is_greedy differs on {greedy_differ}; per item {ref_result.metric} "
          f"differs on {differ} of {ref_result.n}")
    assert worst <= TOLERANCE and greedy_differ == 0 and differ == 0, "the shared-context scores differ from lm-eval's"


if __name__ == "__main__":
    main()
