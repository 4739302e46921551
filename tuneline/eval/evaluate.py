"""Evaluate base, SFT and DPO on the same held-out rows: task metric, benchmarks, perplexity.

    tuneline evaluate configs/default.yaml --adapter sft=/tmp/sft-adapter dpo=/tmp/dpo-adapter

In code: `evaluate(ref, {"sft": sft_dir, "dpo": dpo_dir}, cfg.sft.method, eval_rows, cfg.evaluate, length)`
returns an `EvalReport` (tuneline.eval.report). The base's scores are a `BaseEvaluation` of their own
(`evaluate_base`): the pipeline makes it in the `evaluate_base` step, cached by ZenML as long as the base,
the eval rows and the settings in `base_settings` stay the same, and passes it in as `base=`; without it
(or when it was made for other rows or settings) the base is scored here first.

One copy of the base weights serves every adapter candidate. Plain LoRA adapters (lora, qlora, rslora) are
scored together, in one generation pass and one perplexity pass (PEFT mixed-adapter batches,
tuneline.eval.candidates); any other adapter is loaded into the same PeftModel and switched to, and a
full-weight candidate (sft.method full, bitfit or galore: a model dir, not an adapter) is loaded as its own
model. Every comparison is paired (same items) with a bootstrap CI, so promotion can tell a real change
from noise.
"""

from __future__ import annotations

import logging
import math
import time

from pydantic import BaseModel

from tuneline.config import UNMERGEABLE_METHODS, EvaluateConfig, TunelineConfig
from tuneline.eval.candidates import batchable, score_candidates
from tuneline.eval.harness import BenchmarkResult, run_benchmarks
from tuneline.eval.perplexity import PerplexityResult, general_texts, perplexities, perplexity
from tuneline.eval.report import EvalReport
from tuneline.eval.stats import PairedDiff, paired_bootstrap
from tuneline.eval.task import TaskResult, score_task
from tuneline.model.adapters import align_logits, is_adapter_dir, load_adapter, load_full
from tuneline.model.base import BaseModelRef, load_model, load_tokenizer
from tuneline.model.precision import eval_autocast

log = logging.getLogger(__name__)

# Settings that change how candidates are compared, never the base's own scores.
CANDIDATE_ONLY = ("bootstrap_resamples", "benchmark_candidates")


class EvalRows(BaseModel):
    """The held-out rows every candidate is scored on and the generation length the data step resolved: what
    the base evaluation depends on of the data (not the training rows, so editing those keeps it cached)."""

    rows: list[dict]
    max_new_tokens: int


def eval_rows(task) -> EvalRows:
    """The `split == "eval"` rows of a task table (validate_data's task_data) as plain values (NaN -> None, so
    the rows are the same after a round trip through the artifact store)."""
    from tuneline.data.generation import carried_length

    rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in task[task.split == "eval"].to_dict("records")]
    return EvalRows(rows=rows, max_new_tokens=carried_length(task))


class BaseEvaluation(BaseModel):
    """The base model's scores on the eval rows: what `evaluate` pairs every candidate with."""

    task: TaskResult
    benchmarks: dict[str, BenchmarkResult] = {}
    perplexity: PerplexityResult | None = None
    quantize_4bit: bool = False  # scored in NF4, as QLoRA candidates are
    settings: dict = {}  # base_key of the evaluation settings it was made with
    seconds: float = 0.0

    def fits(self, records: list[dict], cfg: EvaluateConfig, quantize_4bit: bool) -> str:
        """Why this result cannot stand for the base in an evaluation of `records` under `cfg` ('' if it can)."""
        if self.task.item_ids != [r["id"] for r in records]:
            return "it was scored on other eval rows"
        if self.quantize_4bit != quantize_4bit:
            return f"it was scored {'in' if self.quantize_4bit else 'without'} 4-bit, the candidates are not"
        if self.settings != base_key(cfg):
            return "it was made with other evaluation settings"
        return ""


def base_settings(cfg: EvaluateConfig) -> EvaluateConfig:
    """`cfg` with the candidate-only settings at their defaults: the evaluate_base step's parameter, so changing
    them (bootstrap_resamples, benchmark_candidates) keeps the base's cached scores."""
    return cfg.model_copy(update={k: EvaluateConfig.model_fields[k].default for k in CANDIDATE_ONLY})


def base_key(cfg: EvaluateConfig) -> dict:
    """The settings a base evaluation depends on, as plain values (a pinned snapshot's texts left out: the
    general_text artifact keys those)."""
    key = base_settings(cfg).model_dump(mode="json")
    if key.get("perplexity"):
        key["perplexity"].pop("texts", None)
    return key


def evaluate_base(ref: BaseModelRef, records: list[dict], cfg: EvaluateConfig, max_new_tokens: int,
                  quantize_4bit: bool = False, model=None, tokenizer=None) -> BaseEvaluation:
    """Task metric, benchmarks and general-text perplexity of the bare base (loaded here unless `model` is given;
    it must be the plain model, not yet wrapped by PEFT)."""
    t0 = time.perf_counter()
    tok = tokenizer or load_tokenizer(ref)
    model = model if model is not None else load_model(ref, quantize_4bit=quantize_4bit).eval()
    texts = general_texts(cfg)
    with eval_autocast(cfg.bf16, quantize_4bit):
        return BaseEvaluation(
            task=score_task(model, tok, records, max_new_tokens, cfg.batch_size, cfg.metric),
            benchmarks=run_benchmarks(model, tok, cfg),
            perplexity=perplexity(model, tok, texts, cfg.perplexity.batch_size) if texts else None,
            quantize_4bit=quantize_4bit, settings=base_key(cfg), seconds=time.perf_counter() - t0,
        )


def _paired(a, b, cfg: EvaluateConfig) -> PairedDiff:
    return paired_bootstrap(a, b, resamples=cfg.bootstrap_resamples, seed=cfg.seed)


def scored_on_merged(cfg: TunelineConfig) -> bool:
    """Whether the pipeline measures the final model's MMLU / GSM8K / perplexity on the merged weights (the
    score_merged step, which the export gate needs anyway) instead of on the final adapter in `evaluate`.

    The merged model is the final adapter folded into the base (promote checks it answers the same), so
    measuring both would be the same 2-3 minutes twice. Not when there is no merge of that one adapter (a
    method that cannot merge, a combination of several), no exported benchmarks, or a 4-bit base (QLoRA, or
    `auto`, which may pick it): the base is then scored in NF4 and the fp16 merged model would not pair with it."""
    return (cfg.export.benchmarks and cfg.merge.combination == "none"
            and cfg.sft.method not in (*UNMERGEABLE_METHODS, "qlora", "auto"))


def evaluate(ref: BaseModelRef, adapters: dict[str, str], sft_method: str, records: list[dict],
             cfg: EvaluateConfig, max_new_tokens: int, base: BaseEvaluation | None = None,
             final_on_merged: bool = False) -> EvalReport:
    """`adapters` maps candidate name -> adapter dir, in training order; the last one is the final model.
    `max_new_tokens`: data.max_new_tokens as the data step resolved it (tuneline.data.generation).
    `base`: the base's scores from `evaluate_base` (scored here when None or made for other rows/settings).
    `final_on_merged` (`scored_on_merged`): leave the final adapter's benchmarks and perplexity to the merged
    model; `promote.with_exports` then takes the forgetting comparisons from it. Under evaluate.bf16's autocast."""
    with eval_autocast(cfg.bf16, four_bit=sft_method == "qlora"):
        return _evaluate(ref, adapters, sft_method, records, cfg, max_new_tokens, base, final_on_merged)


def _evaluate(ref: BaseModelRef, adapters: dict[str, str], sft_method: str, records: list[dict],
              cfg: EvaluateConfig, max_new_tokens: int, base: BaseEvaluation | None,
              final_on_merged: bool) -> EvalReport:
    t0 = time.perf_counter()
    tok = load_tokenizer(ref)
    quantize_4bit = sft_method == "qlora"
    model = load_model(ref, quantize_4bit=quantize_4bit).eval()
    names = list(adapters)
    final = names[-1]
    if base is not None and (why := base.fits(records, cfg, quantize_4bit)):
        log.warning("the base evaluation passed in does not fit (%s): scoring the base again", why)
        base = None
    # The base is scored before any adapter goes into it (PEFT wraps the model in place).
    base = base or evaluate_base(ref, records, cfg, max_new_tokens, quantize_4bit, model, tok)
    texts = general_texts(cfg)
    task: dict[str, TaskResult] = {"base": base.task}
    bench = {"base": base.benchmarks}
    ppl: dict[str, PerplexityResult] = {"base": base.perplexity} if base.perplexity else {}
    checked = [n for n in names if (n == final or cfg.benchmark_candidates == "all")
               and not (final_on_merged and n == final)]

    together = [n for n in names if batchable(adapters[n])]
    together = together if len(together) > 1 else []
    peft = None
    for name in together:  # every batchable adapter side by side in one PeftModel
        peft = align_logits(load_adapter(peft or model, adapters[name], adapter_name=name))
    if together:
        task |= score_candidates(peft.eval(), tok, records, together, max_new_tokens, cfg.batch_size, cfg.metric)
        if texts and (scored := [n for n in together if n in checked]):
            ppl |= dict(zip(scored, perplexities(peft, tok, texts, scored, cfg.perplexity.batch_size)))
    for name in names:
        if name in together:
            peft.set_adapter(name)
            candidate = peft.eval()
        elif is_adapter_dir(adapters[name]):
            peft = align_logits(load_adapter(peft or model, adapters[name], adapter_name=name))
            if peft.active_adapter != name:  # X-LoRA: set_adapter would switch its experts off
                peft.set_adapter(name)
            candidate = peft.eval()
            task[name] = score_task(candidate, tok, records, max_new_tokens, cfg.batch_size, cfg.metric)
            if texts and name in checked:
                ppl[name] = perplexity(candidate, tok, texts, cfg.perplexity.batch_size)
        else:
            candidate = load_full(adapters[name]).eval()
            task[name] = score_task(candidate, tok, records, max_new_tokens, cfg.batch_size, cfg.metric)
            if texts and name in checked:
                ppl[name] = perplexity(candidate, tok, texts, cfg.perplexity.batch_size)
        if name in checked:
            bench[name] = run_benchmarks(candidate, tok, cfg)

    bench_base = bench["base"]
    changes = {n: {b: _paired(bench[n][b].per_item, bench_base[b].per_item, cfg) for b in bench_base}
               for n in bench if n != "base"}
    nll = {n: _paired(ppl[n].per_item, ppl["base"].per_item, cfg) for n in ppl if n != "base"}
    return EvalReport(
        task=task,
        task_vs_base={n: _paired(task[n].per_item, task["base"].per_item, cfg) for n in names},
        benchmarks=bench,
        benchmarks_vs_base=changes.get(final, {}),
        perplexity=ppl,
        nll_vs_base=nll.get(final),
        forgetting_on="merged" if final_on_merged else final,
        benchmark_changes=changes,
        nll_changes=nll,
        final=final,
        seconds=time.perf_counter() - t0,
    )
