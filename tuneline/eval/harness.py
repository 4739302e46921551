"""The lm-eval runner: MMLU and GSM8K (tuneline.eval.mmlu / .gsm8k) on a model in memory or a GGUF file.

    results = run_benchmarks(model, tokenizer, cfg.evaluate)     # {"mmlu": BenchmarkResult, "gsm8k": ...}
    results = run_gguf_benchmarks("model-Q4_K_M.gguf", cfg.evaluate)

`tuneline evaluate configs/default.yaml` calls run_benchmarks on base and candidates; the export gate
calls both on the merged model and each exported file, so their per-item lists pair item by item.
A model in memory (a plain transformers model or a PEFT `PeftModel`) is evaluated as is: no merged
copy is written. Task YAMLs are written at run time into a temp dir with absolute `data_files` paths
and loaded with `TaskManager(include_path=..., include_defaults=False)`, so nothing is fetched from the hub.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tuneline.config import EvaluateConfig
from tuneline.eval.gsm8k import run_gsm8k
from tuneline.eval.mmlu import run_mmlu


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


def _lm(model, tokenizer, batch_size: int):
    """Wrap an in-memory model for lm-eval: HFLM takes any object with .config, .device, __call__
    and .generate, so a PeftModel runs with its adapter active and nothing is merged or written."""
    from lm_eval.models.huggingface import HFLM

    device = _place(model)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)


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
        return _run_configured(_lm(model, tokenizer, cfg.benchmark_batch_size), cfg)
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
