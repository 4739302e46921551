"""The lm-eval runner: MMLU and GSM8K (tuneline.eval.mmlu / .gsm8k) on a model in memory or a GGUF file.

    results = run_benchmarks(model, tokenizer, cfg.evaluate)     # {"mmlu": BenchmarkResult, "gsm8k": ...}
    results = run_gguf_benchmarks("model-Q4_K_M.gguf", cfg.evaluate)

`tuneline evaluate configs/default.yaml` calls run_benchmarks on base and candidates; the export gate
calls both on the merged model and each exported file, so their per-item lists pair item by item.
A model in memory (a plain transformers model or a PEFT `PeftModel`) is evaluated as is: no merged
copy is written. Task YAMLs are written at run time into a temp dir with absolute `data_files` paths
and loaded with `TaskManager(include_path=..., include_defaults=False)`, so nothing is fetched from the hub.
Loglikelihood (MMLU) runs through `SharedContextHFLM`: each distinct context once, its continuations on
its KV cache; `evaluate.mmlu.reuse_context: false` runs lm-eval's HFLM as is (the reference it must equal,
tests/integration/test_mmlu_kv_reuse.py).
"""

from __future__ import annotations

import copy
import functools
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tuneline.config import EvaluateConfig
from tuneline.eval.gsm8k import run_gsm8k
from tuneline.eval.mmlu import run_mmlu
from tuneline.progress import progress


class BenchmarkResult(BaseModel):
    name: str
    metric: str
    score: float
    n: int
    # 0/1 per scored item, in item_ids order (sorted, so two models' lists pair up item by item).
    per_item: list[float]
    item_ids: list[str]
    per_subject: dict[str, float] = {}
    # Every aggregate lm-eval reported (e.g. both acc and acc_norm), averaged over subjects.
    metrics: dict[str, float] = {}
    seconds: float


def write_task_yaml(config: dict[str, Any], directory: Path) -> Path:
    """Write one task config; strings starting with '!function ' become YAML function tags."""
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)
    # safe_dump quotes the tag as a plain string; unquote it so lm-eval's loader resolves it.
    text = re.sub(r"'!function ([\w.]+)'", r"!function \1", text)
    path = directory / f"{config['task']}.yaml"
    path.write_text(text)
    return path


def run_tasks(lm, configs: list[dict], seed: int, **selection) -> dict:
    """Run lm-eval on task configs written to a temp dir; returns its results dict (with samples)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="tuneline-tasks-") as tmp:
        for config in configs:
            write_task_yaml(config, Path(tmp))
        # include_defaults=False: indexing lm-eval's thousands of built-in YAMLs costs seconds.
        manager = TaskManager(include_path=tmp, include_defaults=False)
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=[c["task"] for c in configs],
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,  # our own paired bootstrap (tuneline.eval.stats) replaces lm-eval's stderr
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **selection,
        )


def item_scores(samples: list[dict], metric: str) -> dict[int, float]:
    """doc_id -> the sample's metric; lm-eval logs one sample per (doc, filter) and these tasks have one filter."""
    return {s["doc_id"]: float(s[metric]) for s in samples}


def _place(model) -> str:
    """Move the model to the GPU when there is one; returns the device it ends up on."""
    import torch

    # 4-bit (QLoRA) models are placed at load time and refuse .to().
    if torch.cuda.is_available() and not getattr(model, "is_quantized", False):
        model.to("cuda")
    return str(next(model.parameters()).device)


def _lm(model, tokenizer, batch_size: int, reuse_context: bool = True):
    """Wrap an in-memory model for lm-eval: HFLM takes any object with .config, .device, __call__
    and .generate, so a PeftModel runs with its adapter active and nothing is merged or written.
    reuse_context=False: lm-eval's own HFLM, the reference SharedContextHFLM's scores must equal."""
    import torch
    from lm_eval.models.huggingface import HFLM

    device = _place(model)
    cls = shared_context_hflm() if reuse_context else HFLM
    # HFLM wraps each forward in autocast(enabled=its mixed_precision_dtype is not None): without the dtype it
    # would switch off the caller's bf16 autocast (evaluate.bf16, precision.eval_autocast), so it takes the caller's.
    on = torch.is_autocast_enabled(torch.device(device).type)
    mixed = torch.get_autocast_dtype(torch.device(device).type) if on else None
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, mixed_precision_dtype=mixed)


@functools.cache
def shared_context_hflm() -> type:
    """The SharedContextHFLM class, built on first use so that importing the harness loads no lm-eval/torch."""
    import torch
    import torch.nn.functional as F
    from lm_eval.models.huggingface import HFLM

    class SharedContextHFLM(HFLM):
        """HFLM whose loglikelihood runs each distinct context once and its continuations on its KV cache.

        HFLM runs context + continuation for every request, with full-vocabulary logits at every position:
        a cloze MMLU item (one long question, four short answers) costs four full passes. Here the context
        runs once, keeping the logits of its last position only, and the item's continuations run as one
        batch on copies of its cache. Same token ids (HFLM's _encode_pair), same log_softmax, same
        (log-probability, is_greedy) per request; anything HFLM would truncate goes to HFLM itself.
        """

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            out: list = [None] * len(requests)
            # HFLM truncates context + continuation past max_length + 1 tokens from the left: keep its path.
            whole = [i for i, (_, ctx, cont) in enumerate(requests)
                     if self.backend == "causal" and len(ctx) + len(cont) <= self.max_length + 1]
            rest = sorted(set(range(len(requests))) - set(whole))
            if rest:
                scored = super()._loglikelihood_tokens([requests[i] for i in rest], disable_tqdm, override_bs)
                for i, answer in zip(rest, scored, strict=True):
                    out[i] = answer
            by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i in whole:
                by_context[tuple(requests[i][1])].append(i)
            size = self.batch_size if isinstance(self.batch_size, int) else 4
            with progress(desc="loglikelihood (shared context)", unit="req", total=len(whole),
                          disable=disable_tqdm or self.rank != 0) as bar:
                for ctx, members in by_context.items():
                    last, cache = self._context(list(ctx))
                    for start in range(0, len(members), size):
                        chunk = members[start:start + size]
                        for i, answer in zip(chunk, self._continuations(last, cache, [requests[i][2] for i in chunk])):
                            out[i] = answer
                            if requests[i][0] is not None:  # None: loglikelihood_rolling windows, as in HFLM
                                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                        bar.update(len(chunk))
            return out

        def _forward(self, ids: torch.Tensor, **kwargs):
            # HFLM._model_call's no_grad and autocast, with a cache in and out.
            with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                                 enabled=self.mixed_precision_dtype is not None):
                return self.model(ids, use_cache=True, **kwargs)

        def _context(self, ctx: list[int]):
            """The context's KV cache and the logits at its last position (those score a continuation's first token)."""
            out = self._forward(torch.tensor([ctx], device=self.device), logits_to_keep=1)
            return out.logits[:, -1:], out.past_key_values

        def _continuations(self, last: torch.Tensor, cache, conts: list[list[int]]) -> list[tuple[float, bool]]:
            width = max(map(len, conts))
            logits = last.expand(len(conts), 1, last.shape[-1])
            if width > 1:
                batch = copy.deepcopy(cache)  # the forward appends to it; the next chunk needs the context alone
                batch.batch_repeat_interleave(len(conts))
                # Right padding (with the row's first token): causal attention keeps it out of real positions.
                ids = [c[:-1] + c[:1] * (width - len(c)) for c in conts]
                more = self._forward(torch.tensor(ids, device=self.device), past_key_values=batch).logits
                logits = torch.cat([logits, more], dim=1)
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            answers = []
            for row, cont in zip(logp, conts):
                target = torch.tensor(cont, device=self.device)
                picked = row[: len(cont)]
                greedy = bool((picked.argmax(dim=-1) == target).all())
                answers.append((float(picked.gather(1, target[:, None]).sum()), greedy))
            return answers

    return SharedContextHFLM


def _run_configured(lm, cfg: EvaluateConfig) -> dict[str, BenchmarkResult]:
    results: dict[str, BenchmarkResult] = {}
    if cfg.mmlu is not None:
        results["mmlu"] = run_mmlu(lm, cfg.mmlu, cfg.seed)
    if cfg.gsm8k is not None:
        results["gsm8k"] = run_gsm8k(lm, cfg.gsm8k, cfg.seed)
    return results


def run_benchmarks(model, tokenizer, cfg: EvaluateConfig) -> dict[str, BenchmarkResult]:
    """Every configured benchmark (a None section is skipped) on the model as it is in memory."""
    if cfg.mmlu is None and cfg.gsm8k is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        reuse = cfg.mmlu is None or cfg.mmlu.reuse_context
        return _run_configured(_lm(model, tokenizer, cfg.benchmark_batch_size, reuse), cfg)
    finally:
        model.train(was_training)


def run_gguf_benchmarks(path: str | Path, cfg: EvaluateConfig) -> dict[str, BenchmarkResult]:
    """Every configured benchmark on one GGUF file, through llama.cpp in process."""
    from tuneline.eval.gguf_lm import GGUFLM

    if cfg.mmlu is None and cfg.gsm8k is None:
        return {}
    lm = GGUFLM(path)
    try:
        return _run_configured(lm, cfg)
    finally:
        lm.close()
