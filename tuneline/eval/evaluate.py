"""Evaluate base, SFT and DPO on the same held-out rows: task metric, benchmarks, perplexity.

    python -m tuneline.eval.evaluate configs/default.yaml /tmp/sft-adapter /tmp/dpo-adapter

One copy of the base weights serves every adapter candidate: the base is scored first, then the
adapters are loaded side by side into one PeftModel and switched. A full-weight candidate (sft.method
full, bitfit or galore: a model dir, not an adapter) is loaded as its own model.
Every comparison is paired (same items) with a bootstrap CI, so promotion can tell a real
change from noise.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from tuneline.model.base import BaseModelRef, load_model, load_tokenizer
from tuneline.eval.benchmarks import BenchmarkResult, PerplexityResult, perplexity, run_benchmarks
from tuneline.config import EvaluateConfig, resolve
from tuneline.data.validate import read_general_texts
from tuneline.eval.task import TaskResult, score_task
from tuneline.train.methods import align_logits, is_adapter_dir, load_adapter, load_full
from tuneline.eval.stats import PairedDiff, paired_bootstrap


class EvalReport(BaseModel):
    task: dict[str, TaskResult]  # candidate -> result on the eval rows
    task_vs_base: dict[str, PairedDiff]  # candidate -> paired diff vs base
    benchmarks: dict[str, dict[str, BenchmarkResult]]  # candidate -> benchmark -> result
    benchmarks_vs_base: dict[str, PairedDiff]  # benchmark -> final vs base (what the gate reads)
    perplexity: dict[str, PerplexityResult] = {}  # candidate -> general-text perplexity
    nll_vs_base: PairedDiff | None = None  # per-text mean NLL, final - base (positive = forgot)
    # Every benchmarked candidate vs base, so the report shows which stage forgot (SFT or DPO).
    benchmark_changes: dict[str, dict[str, PairedDiff]] = {}
    nll_changes: dict[str, PairedDiff] = {}
    final: str
    seconds: float

    def summary(self) -> dict:
        """Flat numbers for ZenML metadata and the run summary."""
        out = {f"task_accuracy/{k}": round(v.score, 4) for k, v in self.task.items()}
        for cand, res in self.benchmarks.items():
            out.update({f"{name}/{cand}": round(r.score, 4) for name, r in res.items()})
        for k, d in self.task_vs_base.items():
            out[f"task_gain/{k}"] = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        for k, d in self.benchmarks_vs_base.items():
            out[f"{k}_change"] = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        out.update({f"perplexity/{k}": round(v.ppl, 3) for k, v in self.perplexity.items()})
        return out


def _paired(a, b, cfg: EvaluateConfig) -> PairedDiff:
    return paired_bootstrap(a, b, resamples=cfg.bootstrap_resamples, seed=cfg.seed)


def general_texts(cfg: EvaluateConfig) -> list[str]:
    """evaluate.perplexity's held-out general texts ([] when it is off)."""
    p = cfg.perplexity
    return read_general_texts(resolve(p.file), p.field, p.rows, p.min_words) if p else []


def evaluate(ref: BaseModelRef, adapters: dict[str, str], sft_method: str, records: list[dict],
             cfg: EvaluateConfig) -> EvalReport:
    """`adapters` maps candidate name -> adapter dir, in training order; the last one is the final model."""
    t0 = time.perf_counter()
    tok = load_tokenizer(ref)
    model = load_model(ref, quantize_4bit=sft_method == "qlora").eval()
    names = list(adapters)

    task: dict[str, TaskResult] = {}
    texts = general_texts(cfg)
    ppl: dict[str, PerplexityResult] = {}
    # The base is scored before any adapter goes into it (PEFT wraps the model in place).
    task["base"] = score_task(model, tok, records, cfg.max_new_tokens, cfg.batch_size, cfg.metric)
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
        task[name] = score_task(candidate, tok, records, cfg.max_new_tokens, cfg.batch_size, cfg.metric)
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


def with_exports(report: EvalReport, reference: TaskResult, exports: list[dict], resamples: int = 2000,
                 seed: int = 0, reference_benchmarks: dict | None = None,
                 reference_perplexity: dict | None = None) -> EvalReport:
    """`report` plus the merged model and every exported file as task candidates, paired with base.

    The exports were scored on the same eval rows (`reference.item_ids`, the merged model's run),
    so each gets a paired CI against the base like the adapters do; so do their MMLU / GSM8K results
    (`reference_benchmarks` for the merged model, each export's `benchmarks`), item by item.
    """
    task, diffs = dict(report.task), dict(report.task_vs_base)
    base = dict(zip(report.task["base"].item_ids, report.task["base"].per_item))
    candidates = {"merged": reference}
    for e in exports:
        if e.get("per_item"):
            n = len(e["per_item"])
            candidates[f"{e.get('format', 'gguf')}-{e['qtype']}"] = TaskResult(
                score=e["score"], n=n, per_item=e["per_item"], item_ids=reference.item_ids[:n],
                predictions=e.get("predictions", []), seconds=e.get("seconds", 0.0), metric=reference.metric)
    for name, res in candidates.items():
        ids = [i for i in res.item_ids if i in base]
        if len(ids) != len(res.item_ids):
            raise ValueError(f"{name} was scored on {len(res.item_ids) - len(ids)} rows the base was not: "
                             "exports must be checked on the evaluation rows")
        task[name] = res
        diffs[name] = paired_bootstrap(res.per_item, [base[i] for i in ids], resamples=resamples, seed=seed)
    bench, changes = dict(report.benchmarks), dict(report.benchmark_changes)
    named = {"merged": reference_benchmarks or {}} | {f"{e.get('format', 'gguf')}-{e['qtype']}": e.get("benchmarks") or {}
                                                      for e in exports}
    for name, results in named.items():
        if results:
            bench[name] = {k: BenchmarkResult(**r) if isinstance(r, dict) else r for k, r in results.items()}
            changes[name] = {k: _paired_items(r, report.benchmarks["base"][k], resamples, seed)
                             for k, r in bench[name].items() if k in report.benchmarks.get("base", {})}
    ppl, nll = _export_perplexity(report, exports, reference_perplexity, resamples, seed)
    return report.model_copy(update={"task": task, "task_vs_base": diffs, "benchmarks": bench,
                                     "benchmark_changes": changes, "perplexity": ppl, "nll_changes": nll})


def _export_perplexity(report: EvalReport, exports: list[dict], reference: dict | None, resamples: int,
                       seed: int) -> tuple[dict, dict]:
    """The merged model's and each export's general-text perplexity, paired with base text by text
    (they scored evaluate.perplexity's texts, in order, on the same token ids)."""
    ppl, nll = dict(report.perplexity), dict(report.nll_changes)
    base = report.perplexity.get("base")
    named = {"merged": PerplexityResult(**reference) if reference else None} | {
        f"{e.get('format', 'gguf')}-{e['qtype']}": PerplexityResult(ppl=e["perplexity"], per_item=e["nll_per_item"])
        for e in exports if e.get("nll_per_item")}
    for name, res in named.items():
        if res is None or base is None:
            continue
        if len(res.per_item) != len(base.per_item):
            raise ValueError(f"{name} was scored on {len(res.per_item)} general texts, the base on {len(base.per_item)}: "
                             "exports must be checked on evaluate.perplexity's texts")
        ppl[name] = res
        nll[name] = paired_bootstrap(res.per_item, base.per_item, resamples=resamples, seed=seed)
    return ppl, nll


def _paired_items(res: BenchmarkResult, base: BenchmarkResult, resamples: int, seed: int) -> PairedDiff:
    """Candidate - base on the items both scored (by item id)."""
    b = dict(zip(base.item_ids, base.per_item))
    ids = [i for i in res.item_ids if i in b]
    if len(ids) != len(res.item_ids):
        raise ValueError(f"{res.name}: {len(res.item_ids) - len(ids)} items the base was not scored on")
    mine = dict(zip(res.item_ids, res.per_item))
    return paired_bootstrap([mine[i] for i in ids], [b[i] for i in ids], resamples=resamples, seed=seed)


if __name__ == "__main__":
    import json
    import sys

    from tuneline.model.base import prepare
    from tuneline.config import load
    from tuneline.data.validate import validate

    cfg = load(sys.argv[1])
    ref = prepare(cfg.base_model)
    v = validate(cfg.data, load_tokenizer(ref))
    adapters = {"sft": sys.argv[2], **({"dpo": sys.argv[3]} if len(sys.argv) > 3 else {})}
    rep = evaluate(ref, adapters, cfg.sft.method, v.task[v.task.split == "eval"].to_dict("records"), cfg.evaluate)
    print(json.dumps(rep.summary(), indent=2))
