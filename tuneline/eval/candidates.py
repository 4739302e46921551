"""Several LoRA candidates scored in one pass: PEFT mixed-adapter batches over one copy of the base weights.

    peft = load_adapter(load_adapter(model, sft_dir, adapter_name="sft"), dpo_dir, adapter_name="dpo")
    results = score_candidates(peft, tok, eval_rows, ["sft", "dpo"], max_new_tokens=16, batch_size=32,
                               metric="exact_match")          # {"sft": TaskResult, "dpo": TaskResult}

`tuneline evaluate` (tuneline.eval.evaluate) scores the SFT and DPO adapters this way when both are plain
LoRA adapters (lora, qlora, rslora): each prompt goes into a batch once per candidate and PEFT routes
every row through its own adapter (`adapter_names`, "__base__" for the bare base), so one generation
scores every candidate. The rows, their order and their left padding are those of
`tuneline.eval.task.generate` (both are `generate_under`), so each candidate's greedy answers are the ones it gets scored alone
(tests/integration/test_batched_candidates.py). Other kinds (DoRA, AdaLoRA, X-LoRA, IA3, prompt and
prefix tuning, full-weight dirs) are not supported by PEFT's mixed batches and keep the one-candidate path.
Speed-up: bench/eval_throughput.py --candidates 2.
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneline.eval.perplexity import perplexities
from tuneline.eval.scoring import PERPLEXITY
from tuneline.eval.task import DOCUMENT_BATCH, TaskResult, check_metrics, documents, generate_rows, result_of

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


def batchable(path: str | Path) -> bool:
    """An adapter dir PEFT can mix with others in one batch: plain LoRA (not DoRA, aLoRA or another tuner)."""
    from peft import LoraConfig, PeftConfig

    if not (Path(path) / "adapter_config.json").exists():
        return False
    config = PeftConfig.from_pretrained(str(path))
    return (type(config) is LoraConfig and not config.use_dora
            and not getattr(config, "alora_invocation_tokens", None))


def score_candidates(model, tokenizer, records: list[dict], adapters: list[str], max_new_tokens: int,
                     batch_size: int, metric: str = "exact_match") -> dict[str, TaskResult]:
    """`task.score_task` for each adapter of a PeftModel, from one shared pass; each result's `seconds` is
    its share of the pass."""
    t0 = time.perf_counter()
    ids = [r["id"] for r in records]
    if metric == PERPLEXITY:
        res = perplexities(model, tokenizer, documents(records), adapters, min(batch_size, DOCUMENT_BATCH))
        return {a: TaskResult(score=r.ppl, n=len(r.per_item), per_item=r.per_item, item_ids=ids, predictions=[],
                              seconds=r.seconds, metric=PERPLEXITY) for a, r in zip(adapters, res)}
    check_metrics(records, metric)  # fail before generating, not after
    preds = generate_rows(model, tokenizer, records, max_new_tokens, batch_size, adapters)
    share = (time.perf_counter() - t0) / len(adapters)
    return {a: result_of(records, answers, metric, max_new_tokens, share) for a, answers in zip(adapters, preds)}
