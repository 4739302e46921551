"""Steps: the eval rows, and the base model's scores on them (task metric, MMLU/GSM8K, perplexity).

    tuneline run configs/default.yaml        # a retrain with the same base and eval rows gets evaluate_base cached

`eval_rows` takes the held-out rows out of validate_data's task table into their own artifact (an `EvalRows`,
content-hashed by ZenML's pydantic materializer), so editing the training rows re-runs this cheap step but
leaves its output, and so `evaluate_base`, unchanged. `evaluate_base`'s cache key is then the base model ref
(source, sha256, chat template), the eval rows and generation length, the general_text snapshot, and the
evaluation settings that can change the base's scores (`base_settings`: metric, batch sizes, the mmlu, gsm8k
and perplexity sections, the seed); `evaluate` pairs every candidate with its result.
"""

from typing import Annotated

import pandas as pd
from zenml import step

from steps._cache import code_cache
from steps._metadata import log
from tuneline.config import EvaluateConfig
from tuneline.eval.evaluate import BaseEvaluation, EvalRows
from tuneline.eval.evaluate import eval_rows as split_eval_rows
from tuneline.eval.evaluate import evaluate_base as score_base
from tuneline.eval.perplexity import GeneralText
from tuneline.model.base import BaseModelRef


@step(cache_policy=code_cache(__name__))
def eval_rows(task_data: pd.DataFrame) -> Annotated[EvalRows, "eval_rows"]:
    rows = split_eval_rows(task_data)
    log({"eval_rows": len(rows.rows), "max_new_tokens": rows.max_new_tokens})
    return rows


@step(cache_policy=code_cache(__name__))
def evaluate_base(base: BaseModelRef, rows: EvalRows, config: EvaluateConfig, quantize_4bit: bool = False,
                  general_text: GeneralText | None = None) -> Annotated[BaseEvaluation, "base_evaluation"]:
    # config: base_settings(config.evaluate), so the candidate-only knobs keep this step cached.
    # quantize_4bit: sft.method qlora scores the base in NF4 too (with `auto` the pipeline cannot know yet;
    # evaluate scores the base again if the candidates turn out to differ).
    config = general_text.pin(config) if general_text else config
    result = score_base(base.ensure(), rows.rows, config, rows.max_new_tokens, quantize_4bit)
    log({"task_score": result.task.score, "n": result.task.n, "seconds": round(result.seconds, 1),
         **{f"{k}/base": round(r.score, 4) for k, r in result.benchmarks.items()},
         **({"perplexity/base": round(result.perplexity.ppl, 3)} if result.perplexity else {})})
    return result
