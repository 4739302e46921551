"""Evaluate base, SFT and DPO on the same held-out rows: task metric, benchmarks, perplexity.

    tuneline evaluate configs/default.yaml --adapter sft=/tmp/sft-adapter dpo=/tmp/dpo-adapter

In code: `evaluate(ref, {"sft": sft_dir, "dpo": dpo_dir}, cfg.sft.method, eval_rows, cfg.evaluate, length)`
returns an `EvalReport` (tuneline.eval.report). One copy of the base weights serves every adapter
candidate: the base is scored first, then the adapters are loaded side by side into one PeftModel and
switched. A full-weight candidate (sft.method full, bitfit or galore: a model dir, not an adapter) is
loaded as its own model. Every comparison is paired (same items) with a bootstrap CI, so promotion can
tell a real change from noise.
"""

from __future__ import annotations

import time

from tuneline.config import EvaluateConfig
from tuneline.eval.harness import run_benchmarks
from tuneline.eval.perplexity import PerplexityResult, general_texts, perplexity
from tuneline.eval.report import EvalReport
from tuneline.eval.stats import PairedDiff, paired_bootstrap
from tuneline.eval.task import TaskResult, score_task
from tuneline.model.adapters import align_logits, is_adapter_dir, load_adapter, load_full
from tuneline.model.base import BaseModelRef, load_model, load_tokenizer


def _paired(a, b, cfg: EvaluateConfig) -> PairedDiff:
    return paired_bootstrap(a, b, resamples=cfg.bootstrap_resamples, seed=cfg.seed)


def evaluate(ref: BaseModelRef, adapters: dict[str, str], sft_method: str, records: list[dict],
             cfg: EvaluateConfig, max_new_tokens: int) -> EvalReport:
    """`adapters` maps candidate name -> adapter dir, in training order; the last one is the final model.
    `max_new_tokens`: data.max_new_tokens as the data step resolved it (tuneline.data.generation)."""
    t0 = time.perf_counter()
    tok = load_tokenizer(ref)
    model = load_model(ref, quantize_4bit=sft_method == "qlora").eval()
    names = list(adapters)

    task: dict[str, TaskResult] = {}
    texts = general_texts(cfg)
    ppl: dict[str, PerplexityResult] = {}
    # The base is scored before any adapter goes into it (PEFT wraps the model in place).
    task["base"] = score_task(model, tok, records, max_new_tokens, cfg.batch_size, cfg.metric)
    bench_base = run_benchmarks(model, tok, cfg)
    if texts:
        ppl["base"] = perplexity(model, tok, texts, cfg.perplexity.batch_size)
    final = names[-1]
    bench = {"base": bench_base}
    peft = None
    for name in names:
        if is_adapter_dir(adapters[name]):
            peft = align_logits(load_adapter(peft or model, adapters[name], adapter_name=name))
            if peft.active_adapter != name:  # X-LoRA: set_adapter would switch its experts off
                peft.set_adapter(name)
            candidate = peft.eval()
        else:
            candidate = load_full(adapters[name]).eval()
        task[name] = score_task(candidate, tok, records, max_new_tokens, cfg.batch_size, cfg.metric)
        if name == final or cfg.benchmark_candidates == "all":
            bench[name] = run_benchmarks(candidate, tok, cfg)
            if texts:
                ppl[name] = perplexity(candidate, tok, texts, cfg.perplexity.batch_size)

    changes = {n: {b: _paired(bench[n][b].per_item, bench_base[b].per_item, cfg) for b in bench_base}
               for n in bench if n != "base"}
    nll = {n: _paired(ppl[n].per_item, ppl["base"].per_item, cfg) for n in ppl if n != "base"}
    return EvalReport(
        task=task,
        task_vs_base={n: _paired(task[n].per_item, task["base"].per_item, cfg) for n in names},
        benchmarks=bench,
        benchmarks_vs_base=changes[final],
        perplexity=ppl,
        nll_vs_base=nll.get(final),
        benchmark_changes=changes,
        nll_changes=nll,
        final=final,
        seconds=time.perf_counter() - t0,
    )
