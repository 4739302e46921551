"""Pure scoring functions for task answers (no models, no hub).

    score_items(predictions, references, "token_f1")   # one score in [0, 1] per item, input order
    score_items(predictions, references, ["exact_match", "token_f1"])   # multi-task: one metric per item

Per-item scores (not just a mean) so two models' results pair up item by item for the paired
bootstrap (tuneline.eval.stats). Metrics (`METRICS`):

- exact_match: the first line of the answer, lower-cased, spaces collapsed and trailing full stops
  dropped (`normalize_label`), equal to the reference's. For label tasks (Banking77).
- token_f1: SQuAD-style token F1 over the whole answer after SQuAD normalization (lower-case, strip
  punctuation and the articles a/an/the, collapse whitespace); two empty answers score 1, one empty 0.
- rouge1, rouge2, rougeL: F-measure from the `evaluate` library's ROUGE (Google's `rouge_score`),
  loaded from the script shipped in tuneline/eval/metrics/rouge/rouge.py by absolute path, so nothing
  is fetched from the hub. rouge_score keeps only [a-z0-9] tokens: an empty prediction, or text
  with no such tokens, scores 0 (even against an empty reference).

The task metric may also be `perplexity` (held-out documents, data.shape text: tuneline.eval.task.score_documents),
where per-item scores are mean NLLs and lower is better; `gain` turns any metric's paired difference so
that positive means better, for the promotion and the export gate.

A multi-task run (data.tasks) scores each item with its own task's metric (give `score_items` one metric per
item); a result over items of several metrics is named `MIXED` (`metric_name`): its mean is the items' mean, in
metric points like each of them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

METRICS = ("exact_match", "token_f1", "rouge1", "rouge2", "rougeL")
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")
PERPLEXITY = "perplexity"  # the task metric of raw text: not scored from answers, see the docstring
LOWER_IS_BETTER = (PERPLEXITY,)
MIXED = "mixed"  # the name of a result whose items were scored with different metrics (multi-task)

_SPACE = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_label(text: str) -> str:
    """First line of a generated answer, lower-cased, spaces and trailing punctuation dropped."""
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    return _SPACE.sub(" ", line).strip().strip(".").strip().lower()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_label(prediction) == normalize_label(reference))


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lower-case, drop punctuation, then articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of token precision and recall over the bag of normalized tokens."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge():
    """The local ROUGE metric, loaded once per process (importing `evaluate` costs seconds)."""
    import evaluate

    from tuneline.eval.metrics import ROUGE_SCRIPT

    # An absolute path to a .py file: evaluate imports it from disk and never looks at the hub.
    # keep_in_memory: no Arrow cache files under ~/.cache, so parallel steps cannot collide.
    return evaluate.load(str(ROUGE_SCRIPT), keep_in_memory=True)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def gain(d, metric: str) -> tuple[float, float, float]:
    """(gain, CI low, CI high) of a paired candidate - base difference (a tuneline.eval.stats.PairedDiff),
    signed so that a positive gain is an improvement whichever way the metric points."""
    if lower_is_better(metric):
        return -d.diff, -d.ci_high, -d.ci_low
    return d.diff, d.ci_low, d.ci_high


def show(metric: str, value: float) -> str:
    """A task score as reports print it: a percentage, or a perplexity as the number it is."""
    return f"{value:.2f}" if lower_is_better(metric) else f"{value:.1%}"


def show_change(metric: str, d) -> tuple[str, str, str]:
    """A paired candidate - base change and its CI bounds as reports print them: percentage points, or for
    perplexity the change in mean NLL per item (nats; negative is better)."""
    fmt, head = ("+.3f", "NLL ") if lower_is_better(metric) else ("+.1%", "")
    return head + format(d.diff, fmt), format(d.ci_low, fmt), format(d.ci_high, fmt)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown task metric {metric!r}: valid metrics are {', '.join(METRICS)}")
    return metric


def metric_name(metrics: Sequence[str]) -> str:
    """The one metric of these items, or MIXED where they differ (an empty list: exact_match, the default)."""
    names = set(metrics)
    return MIXED if len(names) > 1 else next(iter(names), "exact_match")


def score_items(predictions: list[str], references: list[str], metric: str | Sequence[str]) -> list[float]:
    """One score in [0, 1] per (prediction, reference) pair, in input order. `metric`: one for all items, or one
    per item (multi-task rows, each scored with its task's metric)."""
    if not isinstance(metric, str):
        return _score_per_item(predictions, references, list(metric))
    check_metric(metric)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if metric == "exact_match":
        return [exact_match(p, r) for p, r in zip(predictions, references)]
    if metric == "token_f1":
        return [token_f1(p, r) for p, r in zip(predictions, references)]
    if not predictions:
        return []
    # One batched call for all items.
    out = _rouge().compute(predictions=list(predictions), references=list(references),
                           rouge_types=[metric], use_aggregator=False)
    return [float(s) for s in out[metric]]


def _score_per_item(predictions: list[str], references: list[str], metrics: list[str]) -> list[float]:
    """score_items with a metric per item: each metric's items scored together (ROUGE in one batch)."""
    if len(metrics) != len(predictions):
        raise ValueError(f"{len(metrics)} metrics for {len(predictions)} predictions: give one per item")
    out = [0.0] * len(predictions)
    for name in dict.fromkeys(metrics):
        idx = [i for i, m in enumerate(metrics) if m == name]
        for i, score in zip(idx, score_items([predictions[i] for i in idx], [references[i] for i in idx], name)):
            out[i] = score
    return out
