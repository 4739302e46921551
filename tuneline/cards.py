"""Hugging Face model cards (README.md with the Hub's YAML metadata) for every model dir a run hands on.

    about = CardInfo.of(zenml_model, datasets=sources(task_data))           # license, tags, datasets
    write_card(adapter_dir, adapter_card(ref, adapter_dir, "sft", "lora", about, metrics))
    write_card(merged_dir, merged_card(ref, about, report, body))           # body: merge.model_card's text
    write_card(export_dir, export_card(ref, about, files, "gguf", checks.metric))
    ModelCard.load(Path(adapter_dir) / "README.md").data.base_model         # read back by huggingface_hub

Written by huggingface_hub's ModelCard / ModelCardData, so the Hub, `huggingface_hub` and model
registries read them: adapters get `library_name: peft`, the merged model `base_model_relation:
finetune`, each export dir `base_model_relation: quantized` and its format; every card has the run's
license, tags, datasets (the configured data files the rows came from) and a model-index with the
candidate's task metric, MMLU / GSM8K and perplexity. Cards hold no times or paths of the machine, so
an unchanged result writes the same card (the DPO checkpoint key hashes the SFT dir, card included).
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from pydantic import BaseModel

from tuneline.eval.report import EvalReport
from tuneline.export.records import ExportFile
from tuneline.model.base import BaseModelRef

CARD = "README.md"
# Embedded sources are GGUF copies of these Hub models (tuneline.model.base.EMBEDDED).
HUB_IDS = {"embedded:SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "embedded:gemma-3-270m": "google/gemma-3-270m"}
TASK_DATASET = "held-out task rows"
BENCHMARK_DATASETS = {"mmlu": ("cais/mmlu", "MMLU"), "gsm8k": ("openai/gsm8k", "GSM8K")}


class CardInfo(BaseModel):
    """What every card of a run says about the model: the ZenML model's name, license and tags, and the data."""

    name: str = "tuneline-model"
    license: str = ""
    tags: list[str] = []
    datasets: list[str] = []

    @classmethod
    def of(cls, model, datasets: list[str] = ()) -> CardInfo:
        """From the step's ZenML model (None: defaults) and the data sources."""
        if model is None:
            return cls(datasets=list(datasets))
        tags = [t if isinstance(t, str) else t.name for t in (getattr(model, "tags", None) or [])]
        return cls(name=model.name, license=getattr(model, "license", None) or "", tags=tags, datasets=list(datasets))


def card_datasets(directory: str | Path) -> list[str]:
    """The datasets a dir's card names (a merged model inherits its adapter's), [] without a card."""
    path = Path(directory) / CARD
    if not path.is_file():
        return []
    datasets = ModelCard.load(path).data.datasets or []
    return [datasets] if isinstance(datasets, str) else list(datasets)


def sources(*frames) -> list[str]:
    """The data files (as configured) the rows of these DataFrames came from, sorted."""
    return sorted({str(s) for df in frames if df is not None and "source" in df for s in df["source"].unique()})


def base_model_id(ref: BaseModelRef) -> str:
    return HUB_IDS.get(ref.source, ref.source)


def license_fields(text: str) -> dict:
    """A Hub license id as is (apache-2.0, mit); any other text becomes `other` with a license_name."""
    if not text:
        return {}
    if re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", text.strip().lower()) and " " not in text.strip():
        return {"license": text.strip().lower()}
    return {"license": "other", "license_name": re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")}


def _result(metric: str, value: float, dataset: str, name: str, split: str = "test",
            config: str | None = None) -> EvalResult:
    # huggingface_hub groups results by dataset type, config and split (not by name): an export card's
    # files differ by config (the candidate, e.g. gguf-Q8_0), else they would merge into one entry.
    return EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=name, dataset_split=split,
                      dataset_config=config, metric_type=metric, metric_value=round(float(value), 6))


def candidate_results(report: EvalReport, candidate: str) -> list[EvalResult]:
    """The evaluation's figures for one candidate: task metric, MMLU / GSM8K, general-text perplexity."""
    out = []
    if candidate in report.task:
        t = report.task[candidate]
        out.append(_result(t.metric, t.score, "tuneline/task", TASK_DATASET, "eval"))
    for name, b in report.benchmarks.get(candidate, {}).items():
        dataset, label = BENCHMARK_DATASETS.get(name, (name, name))
        out.append(_result(b.metric, b.score, dataset, label))
    if candidate in report.perplexity:
        out.append(_result("perplexity", report.perplexity[candidate].ppl, "tuneline/general-text", "general text"))
    return out


def file_results(f: ExportFile, metric: str) -> list[EvalResult]:
    """One exported file's figures from the export gate (`metric`: the task metric it scored with)."""
    c = f.candidate
    out = [_result(metric, f.score, "tuneline/task", f"{TASK_DATASET} ({c})", "eval", c)] if f.asked else []
    for name, b in f.benchmarks.items():
        dataset, label = BENCHMARK_DATASETS.get(name, (name, name))
        out.append(_result(b.metric, b.score, dataset, f"{label} ({c})", config=c))
    if f.perplexity is not None:
        out.append(_result("perplexity", f.perplexity, "tuneline/general-text", f"general text ({c})", config=c))
    return out


def _data(ref: BaseModelRef, about: CardInfo, name: str, results: list[EvalResult], **extra) -> ModelCardData:
    tags = list(dict.fromkeys(["tuneline", *about.tags, *extra.pop("tags", [])]))
    return ModelCardData(base_model=base_model_id(ref), datasets=about.datasets or None, tags=tags,
                         model_name=name, eval_results=results or None, pipeline_tag="text-generation",
                         **license_fields(about.license), **extra)


def adapter_card(ref: BaseModelRef, directory: str | Path, kind: str, method: str, about: CardInfo,
                 metrics: dict) -> ModelCard:
    """An SFT / DPO adapter (or the whole model of full / bitfit / galore) with its training figures."""
    from tuneline.model.adapters import is_adapter_dir

    adapter = is_adapter_dir(str(directory))
    results = [_result(k, metrics[k], "tuneline/task", TASK_DATASET, split)
               for k, split in (("final_eval_loss", "eval"), ("final_loss", "train"),
                                ("heldout_pref_accuracy_after", "eval")) if metrics.get(k) is not None]
    name = f"{about.name}-{kind}"
    data = _data(ref, about, name, results, library_name="peft" if adapter else "transformers", tags=[kind, method],
                 **({} if adapter else {"base_model_relation": "finetune"}))
    load = (f"`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(\"{base_model_id(ref)}\"), DIR)`"
            if adapter else "`AutoModelForCausalLM.from_pretrained(DIR)` (a whole model: full-weight method)")
    if method == "bottleneck":  # its layers are tuneline's: PEFT alone cannot rebuild them
        load = ("`tuneline.model.adapters.load_adapter(AutoModelForCausalLM.from_pretrained("
                f"\"{base_model_id(ref)}\"), DIR)` (bottleneck layers: PEFT alone cannot load them)")
    body = (f"# {name}\n\nThe {kind.upper()} result ({method}) of a tuneline run on `{ref.source}`. Load it with "
            f"{load}; the evaluation of the final candidate is in the merged model's card.\n")
    return card(data, body)


def merged_card(ref: BaseModelRef, about: CardInfo, report: EvalReport | None, body: str) -> ModelCard:
    """The merged model: `body` (merge.model_card: lineage, evaluation table) under the Hub metadata."""
    results = candidate_results(report, report.final) if report is not None else []
    data = _data(ref, about, about.name, results, library_name="transformers", base_model_relation="finetune")
    return card(data, body)


def export_card(ref: BaseModelRef, about: CardInfo, files: list[ExportFile], fmt: str,
                metric: str = "exact_match") -> ModelCard:
    """An export dir: one model-index entry per file, its format and types, how to serve the GGUF."""
    results = [r for f in files for r in file_results(f, metric)]
    name = f"{about.name}-{fmt}"
    library = "gguf" if fmt == "gguf" else "transformers"
    data = _data(ref, about, name, results, library_name=library, base_model_relation="quantized",
                 quantized_by="tuneline", tags=[fmt, *(f.qtype for f in files)], format=fmt)
    intro = (f"{fmt.upper()} exports of the tuneline merged model of `{ref.source}`, each checked by the export "
             "gate against the merged model.")
    lines = [f"# {name}", "", intro, "", "| file | type | MB | score | perplexity | verdict |",
             "|---|---|---|---|---|---|"]
    for f in files:
        ppl = f"{f.perplexity:.3f}" if f.perplexity is not None else "-"
        score = f"{f.score:.3f}" if f.asked else "not asked"
        lines.append(f"| `{Path(f.path).name}` | {f.qtype} | {f.size_bytes / 2**20:.1f} | {score} | {ppl} | "
                     f"{'passed' if f.passed else 'rejected: ' + f.reason.replace('|', '/')} |")
    for f in files:
        if f.serve is not None:
            served = (f"Served by llama.cpp's OpenAI-compatible server: {f.serve.identical}/{f.serve.n} answers "
                      f"equal the gate's, {f.serve.stopped}/{f.serve.n} ended by a stop.")
            commands = [c for c in (f.serve.command, f.serve.ollama) if c]
            lines += ["", f"## Serving `{Path(f.path).name}`", "", served, "", "```sh", *commands, "```"]
    return card(data, "\n".join(lines) + "\n")


def card(data: ModelCardData, body: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body.lstrip()}")


def write_card(directory: str | Path, model_card: ModelCard) -> Path:
    path = Path(directory) / CARD
    model_card.save(path)
    return path
