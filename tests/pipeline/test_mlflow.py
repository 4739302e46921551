"""The tiny pipeline with ZenML's MLflow experiment tracker (configs/env/mlflow.yaml), read back with MLflow's
own client: the SFT and DPO loss per logged step, the training configs as parameters, every candidate's
evaluation metrics, and the links between the MLflow run and the ZenML run.

    .venv/bin/pytest -q tests/pipeline/test_mlflow.py      # one tiny run (no GPTQ/AWQ, one GGUF type), minutes

Real MLflow (the `mlflow` extra) on a SQLite store in a temp dir; the tracker and its stack are registered
in a ZenML store of this module's own and chosen with ZENML_ACTIVE_STACK_ID, so the repository's active
stack and the session's store (and its cache) are left as they were.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tuneline.paths import PROJECT_ROOT

BIN = Path(sys.executable).parent
STACK = "tuneline-mlflow-test"

QUERY = """
import json
from zenml.client import Client
run = Client().list_pipeline_runs(sort_by="desc:created", size=1, hydrate=True)[0]
steps = run.steps
final = steps["promote"].outputs["final_evaluation"][0].load()
print("JSON" + json.dumps({
    "id": str(run.id), "name": run.name, "status": str(run.status),
    "steps": {n: str(s.status) for n, s in steps.items()},
    "mlflow_run_ids": {n: s.run_metadata.get("mlflow_run_id") for n, s in steps.items()},
    "sft_metrics": steps["train_sft"].outputs["sft_adapter"][0].load().metrics,
    "task": {c: r.score for c, r in final.task.items()},
    "metric": final.task["base"].metric,
    "benchmarks": {c: {b: r.score for b, r in res.items()} for c, res in final.benchmarks.items()},
    "perplexity": {c: r.ppl for c, r in final.perplexity.items()},
    "forgetting_on": final.forgetting_on,
    "promoted": steps["promote"].outputs["promotion"][0].load().promote,
}))
"""


# Its own ZenML store: this run's step runs must not become cache hits for tests/pipeline/test_pipeline.py,
# whose first run asserts that every step really ran.
STORE = tempfile.mkdtemp(prefix="tuneline-zenml-mlflow-")


def _env(**extra) -> dict:
    return os.environ.copy() | {"ZENML_CONFIG_PATH": STORE} | extra


def _zenml(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    p = subprocess.run([str(BIN / "zenml"), *args], cwd=PROJECT_ROOT, env=env or _env(), capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"zenml {' '.join(args)}:\n" + (p.stdout + p.stderr)[-6000:]
    return p


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict:
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]' (make setup installs it)")
    work = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    if not (PROJECT_ROOT / ".zen").exists():
        _zenml("init")
    _zenml("experiment-tracker", "register", f"{STACK}-tracker", "-f", "mlflow", f"--tracking_uri={uri}")
    _zenml("stack", "register", STACK, "-o", "default", "-a", "default", "-e", f"{STACK}-tracker")
    stack_id = subprocess.run(
        [sys.executable, "-c", f"from zenml.client import Client; print('ID', Client().get_stack('{STACK}').id)"],
        cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    stack_id = next(x[3:] for x in stack_id.stdout.splitlines() if x.startswith("ID "))
    # The tiny config without GPTQ/AWQ and with one GGUF type, uncached (a cached step logs nothing),
    # merged with the overlay exactly as a user does.
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    raw["enable_cache"] = False
    raw["parameters"]["config"]["quantize"] = {"methods": []}
    raw["parameters"]["config"]["export"]["gguf_types"] = ["f16"]
    (work / "tiny.yaml").write_text(yaml.safe_dump(raw))
    run_yaml = work / "run.yaml"
    p = subprocess.run([str(BIN / "tuneline"), "config", "merge", str(work / "tiny.yaml"),
                        str(PROJECT_ROOT / "configs" / "env" / "mlflow.yaml"), "-o", str(run_yaml)],
                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    env = _env(ZENML_ACTIVE_STACK_ID=stack_id, TUNELINE_CHECKPOINTS=tempfile.mkdtemp(prefix="tuneline-ckpt-"))
    out = _zenml("pipeline", "run", "pipelines.finetune.finetune", "-c", str(run_yaml), env=env)
    q = subprocess.run([sys.executable, "-c", QUERY], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    line = [x for x in q.stdout.splitlines() if x.startswith("JSON")]
    assert line, q.stdout[-3000:] + q.stderr[-3000:]
    return {"uri": uri, "zenml": json.loads(line[0][4:]), "output": out.stdout + out.stderr}


@pytest.fixture(scope="module")
def mlflow_run(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked["uri"])
    experiment = client.get_experiment_by_name("tuneline")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_the_mlflow_run_links_to_the_zenml_run(tracked, mlflow_run):
    _, run = mlflow_run
    zenml = tracked["zenml"]
    assert zenml["status"] == "completed", zenml["steps"]
    assert run.info.run_name == zenml["name"] and run.data.tags["zenml.run_id"] == zenml["id"]
    assert run.data.tags["zenml.pipeline"] == "finetune" and run.data.tags["project"] == "tuneline"
    # ...and the other way: each tracked step's ZenML metadata names this MLflow run; the others have none.
    tracked_steps = {"train_sft", "train_dpo", "evaluate", "promote"}
    assert {s: r for s, r in zenml["mlflow_run_ids"].items() if r} == {s: run.info.run_id for s in tracked_steps}


def test_training_logs_the_loss_per_step_and_the_hyperparameters(tracked, mlflow_run):
    client, run = mlflow_run
    sft = client.get_metric_history(run.info.run_id, "sft/loss")
    steps = [m.step for m in sft]
    assert len(sft) >= 2 and steps == sorted(steps) and len(set(steps)) == len(steps), steps
    metrics = tracked["zenml"]["sft_metrics"]  # the adapter's own record of the same training
    assert sft[0].value == pytest.approx(metrics["first_loss"])
    assert sft[-1].value == pytest.approx(metrics["final_loss"])
    assert client.get_metric_history(run.info.run_id, "sft/eval_loss"), "the held-out loss is logged too"
    assert client.get_metric_history(run.info.run_id, "dpo/loss"), "DPO logs its loss curve"
    assert run.data.metrics["sft/summary/steps"] == metrics["steps"]
    tiny = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())["parameters"]["config"]
    params = run.data.params
    assert params["sft.batch_size"] == str(tiny["sft"]["batch_size"])
    assert params["dpo.max_length"] == str(tiny["dpo"]["max_length"])
    assert "sft.learning_rate" in params and "dpo.beta" in params and params["sft.trained_method"] == "lora"
    assert params["sft.seed"] == str(metrics["seed"]) and params["sft.base_sha256"] == metrics["base_sha256"]


def test_every_candidate_is_evaluated_in_mlflow(tracked, mlflow_run):
    _, run = mlflow_run
    zenml, logged = tracked["zenml"], run.data.metrics
    assert set(zenml["task"]) == {"base", "sft", "dpo", "merged", "gguf-F16"}, zenml["task"]
    for candidate, score in zenml["task"].items():
        assert logged[f"eval/{candidate}/task_{zenml['metric']}"] == pytest.approx(score), candidate
    # Perplexity is measured once per model: the base, SFT, and the final model on its merged weights (DPO's
    # adapter folded in), so DPO itself has none and the forgetting figures come from "merged".
    assert zenml["forgetting_on"] == "merged" and "dpo" not in zenml["perplexity"], zenml["perplexity"]
    assert {"base", "merged"} <= set(zenml["perplexity"]), zenml["perplexity"]
    for candidate, ppl in zenml["perplexity"].items():
        assert logged[f"eval/{candidate}/perplexity"] == pytest.approx(ppl), candidate
    for candidate, benches in zenml["benchmarks"].items():
        for bench, score in benches.items():
            assert logged[f"eval/{candidate}/{bench}"] == pytest.approx(score), (candidate, bench)
    assert run.data.tags["tuneline.promoted"] == str(zenml["promoted"]).lower()
    assert "because" in run.data.tags["tuneline.decision"]


def test_the_default_path_never_imports_mlflow():
    code = "import sys, pipelines.finetune, steps._tracking; print('MLFLOW', 'mlflow' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert "MLFLOW False" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
