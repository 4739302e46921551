"""Evaluate base, SFT and DPO on the same held-out rows; benchmarks for base and final.

    python -m tuneline.evaluate configs/default.yaml /tmp/sft-adapter /tmp/dpo-adapter

One copy of the base weights serves every candidate: the adapters are loaded side by side
into one PeftModel and switched; the base is the model with adapters disabled.
Every comparison is paired (same items) with a bootstrap CI, so promotion can tell a real
change from noise.
"""

from __future__ import annotations

import time

from peft import PeftModel
from pydantic import BaseModel

from tuneline.base_model import BaseModelRef, load_model, load_tokenizer
from tuneline.benchmarks import BenchmarkResult, PerplexityResult, perplexity, run_benchmarks
from tuneline.config import EvaluateConfig, resolve
from tuneline.data import read_general_texts
from tuneline.generate import TaskResult, task_accuracy
from tuneline.stats import PairedDiff, paired_bootstrap


class EvalReport(BaseModel):
    task: dict[str, TaskResult]  # candidate -> result on the eval rows
    task_vs_base: dict[str, PairedDiff]  # candidate -> paired diff vs base
    benchmarks: dict[str, dict[str, BenchmarkResult]]  # candidate ("base"/final) -> benchmark -> result
    benchmarks_vs_base: dict[str, PairedDiff]  # benchmark -> final vs base
    perplexity: dict[str, PerplexityResult] = {}  # "base"/final -> general-text perplexity
    nll_vs_base: PairedDiff | None = None  # per-text mean NLL, final - base (positive = forgot)
    final: str
    seconds: float

    def summary(self) -> dict:
        """Flat numbers for ZenML metadata and the run summary."""
        out = {f"task_accuracy/{k}": round(v.accuracy, 4) for k, v in self.task.items()}
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


def _general_texts(cfg: EvaluateConfig) -> list[str]:
    p = cfg.perplexity
    return read_general_texts(resolve(p.file), p.field, p.rows, p.min_words) if p else []


def evaluate(ref: BaseModelRef, adapters: dict[str, str], sft_method: str, records: list[dict],
             cfg: EvaluateConfig) -> EvalReport:
    """`adapters` maps candidate name -> adapter dir, in training order; the last one is the final model."""
    t0 = time.perf_counter()
    tok = load_tokenizer(ref)
    model = load_model(ref, quantize_4bit=sft_method == "qlora")
    names = list(adapters)
    model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()

    task: dict[str, TaskResult] = {}
    texts = _general_texts(cfg)
    ppl: dict[str, PerplexityResult] = {}
    with model.disable_adapter():
        task["base"] = task_accuracy(model, tok, records, cfg.max_new_tokens, cfg.batch_size, cfg.metric)
        bench_base = run_benchmarks(model, tok, cfg)
        if texts:
            ppl["base"] = perplexity(model, tok, texts, cfg.perplexity.batch_size)
    for name in names:
        model.set_adapter(name)
        task[name] = task_accuracy(model, tok, records, cfg.max_new_tokens, cfg.batch_size, cfg.metric)
    final = names[-1]
    bench_final = run_benchmarks(model, tok, cfg)  # the final adapter is active
    if texts:
        ppl[final] = perplexity(model, tok, texts, cfg.perplexity.batch_size)

    return EvalReport(
        task=task,
        task_vs_base={n: _paired(task[n].per_item, task["base"].per_item, cfg) for n in names},
        benchmarks={"base": bench_base, final: bench_final},
        benchmarks_vs_base={b: _paired(bench_final[b].per_item, bench_base[b].per_item, cfg) for b in bench_base},
        perplexity=ppl,
        nll_vs_base=_paired(ppl[final].per_item, ppl["base"].per_item, cfg) if texts else None,
        final=final,
        seconds=time.perf_counter() - t0,
    )


if __name__ == "__main__":
    import json
    import sys

    from tuneline.base_model import prepare
    from tuneline.config import load
    from tuneline.data import validate

    cfg = load(sys.argv[1])
    ref = prepare(cfg.base_model)
    v = validate(cfg.data, load_tokenizer(ref))
    adapters = {"sft": sys.argv[2], **({"dpo": sys.argv[3]} if len(sys.argv) > 3 else {})}
    rep = evaluate(ref, adapters, cfg.sft.method, v.task[v.task.split == "eval"].to_dict("records"), cfg.evaluate)
    print(json.dumps(rep.summary(), indent=2))
