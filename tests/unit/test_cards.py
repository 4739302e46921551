"""Model cards: every card tuneline writes is read back by huggingface_hub's own parser, fields checked."""

import pandas as pd
import pytest
from huggingface_hub import ModelCard, metadata_load

from tuneline.cards import (
    CardInfo,
    adapter_card,
    card_datasets,
    export_card,
    license_fields,
    merged_card,
    sources,
    write_card,
)
from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.report import EvalReport
from tuneline.eval.task import TaskResult
from tuneline.export.merge import model_card
from tuneline.export.records import ExportFile, ServeCheck
from tuneline.model.base import BaseModelRef

REF = BaseModelRef(source="embedded:SmolLM2-135M-Instruct", path="/nowhere", sha256="ab" * 32)
ABOUT = CardInfo(name="tuneline-banking77", license="Apache-2.0 (model), CC BY 4.0 (Banking77)",
                 tags=["banking77", "lora"], datasets=["data/banking77/test.csv", "data/banking77/train.csv"])


def bench(name: str, metric: str, score: float) -> BenchmarkResult:
    return BenchmarkResult(name=name, metric=metric, score=score, n=2, per_item=[1.0, 0.0], item_ids=["a", "b"],
                           seconds=1.0)


def task(score: float) -> TaskResult:
    return TaskResult(score=score, n=4, per_item=[1.0] * 4, item_ids=list("abcd"), predictions=[""] * 4, seconds=1.0)


def report() -> EvalReport:
    return EvalReport(task={"base": task(0.1), "sft": task(0.5), "dpo": task(0.625)}, task_vs_base={},
                      benchmarks={"dpo": {"mmlu": bench("mmlu", "acc", 0.25),
                                          "gsm8k": bench("gsm8k", "exact_match", 0.0)}},
                      benchmarks_vs_base={}, perplexity={"dpo": PerplexityResult(ppl=21.5, per_item=[3.0])},
                      final="dpo", seconds=3.0)


def index(meta: dict) -> dict[tuple[str, str], float]:
    """model-index results as {(dataset name, metric type): value}."""
    (entry,) = meta["model-index"]
    return {(r["dataset"]["name"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}


def test_adapter_cards_parse_with_peft_metadata(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    path = write_card(tmp_path, adapter_card(REF, tmp_path, "sft", "lora", ABOUT,
                                             {"final_eval_loss": 1.25, "final_loss": 0.75, "train_seconds": 9.1}))
    card = ModelCard.load(path)
    assert card.data.library_name == "peft"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.datasets == ABOUT.datasets
    assert card.data.license == "other" and card.data.license_name == "apache-2-0-model-cc-by-4-0-banking77"
    assert card.data.tags == ["tuneline", "banking77", "lora", "sft"]
    meta = metadata_load(path)
    assert meta["model-index"][0]["name"] == "tuneline-banking77-sft"
    assert index(meta) == {("held-out task rows", "final_eval_loss"): 1.25, ("held-out task rows", "final_loss"): 0.75}
    assert "train_seconds" not in path.read_text()  # a card holds no timings: the same result, the same card
    assert card_datasets(tmp_path) == ABOUT.datasets


def test_a_full_weight_result_is_a_transformers_finetune(tmp_path):
    card = ModelCard.load(write_card(tmp_path, adapter_card(REF, tmp_path, "sft", "full", ABOUT, {})))
    assert card.data.library_name == "transformers" and card.data.base_model_relation == "finetune"
    assert card.data.eval_results is None


def test_merged_card_keeps_the_lineage_and_table_under_metadata(tmp_path):
    table = "| candidate | score |\n|---|---|\n| dpo | 62% |"
    body = model_card(REF, "/tmp/dpo-adapter", {"data_sha256": "cafe"}, table)
    path = write_card(tmp_path, merged_card(REF, ABOUT, report(), body))
    card = ModelCard.load(path)
    assert card.data.base_model_relation == "finetune" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert index(metadata_load(path)) == {("held-out task rows", "exact_match"): 0.625, ("MMLU", "acc"): 0.25,
                                          ("GSM8K", "exact_match"): 0.0, ("general text", "perplexity"): 21.5}
    assert card.text.startswith("# tuneline merged model")
    assert "- data_sha256: `\"cafe\"`" in card.text and "| dpo | 62% |" in card.text


@pytest.mark.parametrize("after", [True, False])
def test_merged_card_says_where_the_final_benchmarks_are_when_they_come_after_the_merge(after):
    body = model_card(REF, "/tmp/dpo-adapter", {}, "| dpo | 62% |", benchmarks_after_merge=after)
    assert ("measured once, after this merge (the `score_merged` step)" in body) is after
    assert "| dpo | 62% |" in body


def test_export_card_names_format_files_and_serving(tmp_path):
    files = [ExportFile(format="gguf", qtype="F16", path="/x/model-F16.gguf", size_bytes=2**20, score=0.5,
                        perplexity=21.6, passed=True, benchmarks={"mmlu": bench("mmlu", "acc", 0.3)}),
             ExportFile(format="gguf", qtype="Q4_K_M", path="/x/model-Q4_K_M.gguf", size_bytes=2**19, score=0.25,
                        passed=True, serve=ServeCheck(
                            served=True, n=4, identical=4, stopped=4,
                            command="python -m llama_cpp.server --model model-Q4_K_M.gguf",
                            ollama="ollama create tuneline-q4_k_m -f model-Q4_K_M.Modelfile"))]
    path = write_card(tmp_path, export_card(REF, ABOUT, files, "gguf", "token_f1"))
    card = ModelCard.load(path)
    assert card.data.base_model_relation == "quantized" and card.data.quantized_by == "tuneline"
    assert card.data.library_name == "gguf" and card.data.to_dict()["format"] == "gguf"
    assert {"gguf", "F16", "Q4_K_M"} <= set(card.data.tags)
    assert index(metadata_load(path)) == {
        ("held-out task rows (gguf-F16)", "token_f1"): 0.5, ("MMLU (gguf-F16)", "acc"): 0.3,
        ("general text (gguf-F16)", "perplexity"): 21.6, ("held-out task rows (gguf-Q4_K_M)", "token_f1"): 0.25}
    assert "4/4 answers equal the gate's" in card.text
    assert "ollama create tuneline-q4_k_m -f model-Q4_K_M.Modelfile" in card.text


@pytest.mark.parametrize("text, fields", [
    ("apache-2.0", {"license": "apache-2.0"}), ("MIT", {"license": "mit"}), ("", {}),
    ("CC BY 4.0", {"license": "other", "license_name": "cc-by-4-0"}),
])
def test_license_fields(text, fields):
    assert license_fields(text) == fields


def test_sources_are_the_configured_files():
    df = pd.DataFrame({"source": ["b.csv", "a.csv", "b.csv"]})
    assert sources(df, None, pd.DataFrame({"x": [1]})) == ["a.csv", "b.csv"]
