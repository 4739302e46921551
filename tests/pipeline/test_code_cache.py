"""A change to the code a step runs re-runs it; a change to code it does not run leaves it cached. The real
data_gate step with the cache policy every step has (steps/_cache.py), its hashed files looked up in a copy of
the project's packages, on the session's fresh local ZenML store.

    .venv/bin/pytest -q tests/pipeline/test_code_cache.py
"""

import shutil

from zenml import pipeline, step
from zenml.client import Client

import pipelines.finetune as finetune
import steps._cache
from steps.data_gate import data_gate
from tuneline.paths import PROJECT_ROOT
from tuneline.sources import PACKAGES, module_files


@step
def validation() -> dict:  # validate_data's place
    return {"gate_failures": []}


@pipeline(enable_cache=True)
def gated():
    data_gate(validation())


def _statuses(run) -> dict[str, str]:
    run = Client().get_pipeline_run(run.id)
    return {name: str(s.status).rsplit(".", 1)[-1] for name, s in run.steps.items()}


def test_a_change_to_tuneline_code_reruns_the_step_that_runs_it(tmp_path, monkeypatch):
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(steps._cache, "ROOT", tmp_path)
    readers = tmp_path / "tuneline" / "data" / "readers.py"  # what data_gate calls: its DataError
    readers.write_text(readers.read_text() + "\n# this test's copy\n")  # a key no earlier run in the store has

    assert _statuses(gated()) == {"validation": "completed", "data_gate": "completed"}
    assert _statuses(gated())["data_gate"] == "cached"
    readers.write_text(readers.read_text() + "\n# a change\n")
    assert _statuses(gated()) == {"validation": "cached", "data_gate": "completed"}
    quantize = tmp_path / "tuneline" / "export" / "quantize.py"  # nothing data_gate runs
    quantize.write_text(quantize.read_text() + "\n# a change\n")
    assert _statuses(gated())["data_gate"] == "cached"


def test_every_cached_step_of_the_pipeline_keys_on_the_code_it_calls():
    calls = {"train_sft": "tuneline.train.sft", "train_dpo": "tuneline.train.dpo",
             "evaluate_base": "tuneline.eval.evaluate", "score_merged": "tuneline.export.gate",
             "export_gguf": "tuneline.export.gguf", "export_gptq": "tuneline.export.quantize",
             "validate_data": "tuneline.data.validate", "merge": "tuneline.export.merge"}
    for name, module in calls.items():
        policy = getattr(finetune, name).configuration.cache_policy
        step_module = policy.cache_func.import_path.rsplit(".", 1)[0]
        assert module in module_files(step_module), (name, step_module)
    # Not everything: a training step does not re-run for a change to the exports.
    assert "tuneline.export.quantize" not in module_files("steps.train_sft")
