"""A change to the code a step runs re-runs it; a change to code it does not run leaves it cached. The real
data_gate step, with the cache policy every step has (steps/_cache.py) pointed at a copy of the project's packages,
on the session's fresh local ZenML store.

    .venv/bin/pytest -q tests/pipeline/test_code_cache.py
"""

import shutil

from zenml import pipeline, step
from zenml.client import Client

import pipelines.finetune as finetune
from steps._cache import code_cache
from steps.data_gate import data_gate
from tuneline.paths import PROJECT_ROOT
from tuneline.sources import PACKAGES


@step
def validation() -> dict:  # validate_data's place
    return {"gate_failures": []}


def _statuses(run) -> dict[str, str]:
    run = Client().get_pipeline_run(run.id)
    return {name: str(s.status).rsplit(".", 1)[-1] for name, s in run.steps.items()}


def test_a_change_to_tuneline_code_reruns_the_step_that_runs_it(tmp_path):
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    gate = data_gate.with_options(cache_policy=code_cache("steps.data_gate", root=tmp_path))

    @pipeline(enable_cache=True)
    def gated():
        gate(validation())

    assert _statuses(gated()) == {"validation": "completed", "data_gate": "completed"}
    assert _statuses(gated())["data_gate"] == "cached"
    readers = tmp_path / "tuneline" / "data" / "readers.py"  # what data_gate calls: its DataError
    readers.write_text(readers.read_text() + "\n# a change\n")
    assert _statuses(gated()) == {"validation": "cached", "data_gate": "completed"}
    quantize = tmp_path / "tuneline" / "export" / "quantize.py"  # nothing data_gate runs
    quantize.write_text(quantize.read_text() + "\n# a change\n")
    assert _statuses(gated())["data_gate"] == "cached"


def test_every_cached_step_of_the_pipeline_keys_on_the_code_it_calls():
    calls = {"train_sft": "tuneline/train/sft.py", "train_dpo": "tuneline/train/dpo.py",
             "evaluate_base": "tuneline/eval/evaluate.py", "score_merged": "tuneline/export/gate.py",
             "export_gguf": "tuneline/export/gguf.py", "export_gptq": "tuneline/export/quantize.py",
             "validate_data": "tuneline/data/validate.py", "merge": "tuneline/export/merge.py"}
    for name, file in calls.items():
        files = getattr(finetune, name).configuration.cache_policy.file_dependencies
        assert any(f.endswith(file) for f in files), (name, files)
        assert any(f.endswith(f"steps/{name}.py") or f.endswith("steps/export_quantized.py") for f in files)
    # Not everything: a training step does not re-run for a change to the exports.
    assert not any(f.endswith("tuneline/export/quantize.py")
                   for f in finetune.train_sft.configuration.cache_policy.file_dependencies)
