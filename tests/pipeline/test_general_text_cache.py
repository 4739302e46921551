"""Editing evaluate.perplexity's file re-runs what scores it and nothing that trains: the real snapshot_data step
on the session's fresh local ZenML store, with two stand-in consumers wired as pipelines/finetune.py wires
validate_data (raw_data) and evaluate / the exports (general_text).

    .venv/bin/pytest -q tests/pipeline/test_general_text_cache.py
"""

import json

from zenml import pipeline, step
from zenml.client import Client

from steps.snapshot_data import snapshot_data
from tuneline.config import DataConfig, PerplexityConfig
from tuneline.data.snapshot import RawDataDir, fingerprint
from tuneline.eval.perplexity import GeneralText, general_text_sha256


@step
def reads_raw_data(raw: RawDataDir) -> str:  # validate_data's place: what training depends on
    return raw.sha256


@step
def scores_general_text(general_text: GeneralText) -> int:  # evaluate's and the exports' place
    return len(general_text.texts)


@pipeline(enable_cache=True)
def lineage(data: DataConfig, perplexity: PerplexityConfig):
    raw, general_text = snapshot_data(data, fingerprint(data), perplexity, general_text_sha256(perplexity))
    reads_raw_data(raw)
    scores_general_text(general_text)


def _statuses(run) -> dict[str, str]:
    run = Client().get_pipeline_run(run.id)
    return {name: str(s.status).rsplit(".", 1)[-1] for name, s in run.steps.items()}


def test_an_edited_general_text_reruns_its_readers_only(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    text = tmp_path / "general.jsonl"
    text.write_text("".join(json.dumps({"text": f"general text number {i} here"}) + "\n" for i in range(3)))
    data = DataConfig(train_file=str(train), test_file=None)
    ppl = PerplexityConfig(file=str(text), field="text", rows=2, min_words=3)

    assert set(_statuses(lineage(data, ppl)).values()) == {"completed"}
    assert set(_statuses(lineage(data, ppl)).values()) == {"cached"}
    with text.open("a") as f:
        f.write(json.dumps({"text": "one more general text here"}) + "\n")
    run = lineage(data, ppl)
    assert _statuses(run) == {"snapshot_data": "completed", "reads_raw_data": "cached",
                              "scores_general_text": "completed"}
    snap = Client().get_pipeline_run(run.id).steps["snapshot_data"].outputs["general_text"][0].load()
    assert snap.sha256 == general_text_sha256(ppl) and snap.texts[-1] == "one more general text here"
