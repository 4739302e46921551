# Adapted from the `rouge` metric of the Hugging Face `evaluate` project
# (https://github.com/huggingface/evaluate/blob/main/metrics/rouge/rouge.py),
# Copyright 2020 The HuggingFace Evaluate Authors, licensed under the Apache License, Version 2.0
# (http://www.apache.org/licenses/LICENSE-2.0). Changes for tuneline: shipped in the repo so that
# `evaluate.load(<absolute path>)` never reaches the hub; single references only; no bootstrap
# aggregator (the mean is returned; tuneline does its own paired bootstrap on per-item scores);
# only the imports it needs.
"""ROUGE-N / ROUGE-L F-measure through Google Research's `rouge_score` package, as an evaluate.Metric.

    import evaluate
    from tuneline.eval.metrics import ROUGE_SCRIPT
    rouge = evaluate.load(str(ROUGE_SCRIPT), keep_in_memory=True)
    rouge.compute(predictions=["the cat sat"], references=["the cat sat on the mat"],
                  rouge_types=["rouge1"], use_aggregator=False)   # {'rouge1': [0.666...]}

`rouge_score`'s default tokenizer lower-cases and keeps only [a-z0-9] runs, so text in other
scripts scores 0. This file is copied by `evaluate` into its modules cache and imported from
there: it must not use relative imports.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    address = "Barcelona, Spain",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W04-1013",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) compares a prediction with a reference by
n-gram overlap (rouge1, rouge2, ...) or longest common subsequence (rougeL, rougeLsum). Case-insensitive.
Wraps https://github.com/google-research/google-research/tree/master/rouge (the `rouge_score` package).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted strings.
    references: list of reference strings, one per prediction.
    rouge_types: which scores to return; default ["rouge1", "rouge2", "rougeL", "rougeLsum"].
    use_stemmer: strip word suffixes with the Porter stemmer before matching (default False).
    use_aggregator: True (default) returns the mean F-measure per type; False returns the list of
        per-item F-measures, in input order.
Returns:
    {rouge_type: float or list[float]}, F-measures in [0, 1].
"""

DEFAULT_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string", id="sequence"),
                 "references": datasets.Value("string", id="sequence")}
            ),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False):
        types = list(rouge_types or DEFAULT_TYPES)
        scorer = rouge_scorer.RougeScorer(rouge_types=types, use_stemmer=use_stemmer)
        # rouge_score's argument order is (target, prediction).
        scores = [scorer.score(ref, pred) for ref, pred in zip(references, predictions)]
        per_item = {t: [s[t].fmeasure for s in scores] for t in types}
        if use_aggregator:
            return {t: sum(v) / len(v) if v else 0.0 for t, v in per_item.items()}
        return per_item
