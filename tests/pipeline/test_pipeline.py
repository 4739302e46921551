"""The real ZenML pipeline on the tiny model: every step runs, a re-run is cached, and a DPO-only
config change re-runs DPO and what follows it, nothing before.

Runs `zenml pipeline run` exactly as a user does, against a fresh local SQLite store.
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

ZENML = str(Path(sys.executable).parent / "zenml")
STEPS = ["prepare_base", "plan", "snapshot_data", "validate_data", "data_gate", "eval_rows", "evaluate_base", "train_sft", "train_dpo", "evaluate", "merge", "score_merged", "export_gguf", "export_gptq", "export_awq", "promote"]

QUERY = """
import json
from zenml.client import Client
run = Client().list_pipeline_runs(sort_by="desc:created", size=1, hydrate=True)[0]
out = {"status": str(run.status), "steps": {n: str(s.status) for n, s in run.steps.items()}}
sft = run.steps["train_sft"].outputs["sft_adapter"][0]
out["sft_adapter_mb"] = sft.run_metadata.get("size_mb")
out["rejected_rows"] = run.steps["validate_data"].outputs["rejected_rows"][0].load().shape[0]
out["data_validation"] = run.steps["validate_data"].outputs["data_validation"][0].load()
final = run.steps["promote"].outputs["final_evaluation"][0].load()
out["task_candidates"] = list(final.task)
out["benchmark_candidates"] = {c: sorted(v) for c, v in final.benchmark_changes.items()}
out["forgetting_on"] = final.forgetting_on
out["forgetting_is_merged"] = (final.benchmarks_vs_base == final.benchmark_changes.get("merged")
                               and final.nll_vs_base == final.nll_changes.get("merged"))
out["perplexity_candidates"] = sorted(final.perplexity)
merged = run.steps["merge"].outputs["merged_model"][0]
out["model_card"] = open(merged.load().path + "/README.md").read()
out["data_sha256"] = run.steps["snapshot_data"].run_metadata.get("data_sha256")
files = [f for s, name in (("export_gguf", "gguf_export"), ("export_gptq", "gptq_export"), ("export_awq", "awq_export"))
         for f in run.steps[s].outputs[name][0].load().files]
out["exports"] = {f.candidate: [f.passed, f.reason, f.auto] for f in files}
from tuneline.export.records import shipped
out["shipped"] = shipped(files).candidate if shipped(files) else None
out["benchmarks_notes"] = {f.candidate: f.benchmarks_note for f in files}
out["decision"] = run.steps["promote"].outputs["promotion"][0].load().model_dump()
out["checkpoints"] = {s: sorted(n for n in run.steps[s].outputs if n.startswith("checkpoint-")) for s in ("train_sft", "train_dpo")}
out["visualizations"] = sorted(n for s in run.steps.values() for n, a in s.outputs.items() if a[0].visualizations)
import importlib.util
spec = importlib.util.spec_from_file_location("default_run", "bench/default_run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
b = bench.collect(str(run.id))
out["bench"] = {"sft_tokens_per_s": b["sft_tokens_per_s"], "steps": {n: s["seconds"] for n, s in b["steps"].items()},
                "throughput": b["throughput"]}
print("JSON" + json.dumps(out))
"""


# Training checkpoints of these runs go to a fresh dir: one left in ~/.cache by an earlier session
# would be resumed from, and no new checkpoint (nor its artifact) would be written.
CHECKPOINTS = tempfile.mkdtemp(prefix="tuneline-ckpt-")


def _zenml(*args, cwd=PROJECT_ROOT):
    env = os.environ.copy() | {"TUNELINE_CHECKPOINTS": CHECKPOINTS}
    return subprocess.run([ZENML, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _last_run() -> dict:
    p = subprocess.run([sys.executable, "-c", QUERY], cwd=PROJECT_ROOT, env=os.environ.copy(), capture_output=True,
                       text=True, timeout=300)
    line = [x for x in p.stdout.splitlines() if x.startswith("JSON")]
    assert line, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(line[0][4:])


def _run(config: Path) -> tuple[str, dict]:
    p = _zenml("pipeline", "run", "pipelines.finetune.finetune", "-c", str(config))
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    return p.stdout + p.stderr, _last_run()


@pytest.fixture(scope="module", autouse=True)
def zenml_repository():
    """ZenML finds step sources from the repository root: `zenml init` it on a fresh clone."""
    if not (PROJECT_ROOT / ".zen").exists():
        p = _zenml("init")
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="module")
def first_run():
    return _run(PROJECT_ROOT / "configs" / "tiny.yaml")


def test_every_step_runs_and_the_gate_explains_itself(first_run):
    out, run = first_run
    assert set(run["steps"]) == set(STEPS) and all(s == "completed" for s in run["steps"].values()), run
    assert "tuneline run summary" in out and "task exact_match" in out
    exports = run["exports"]  # every file tried, in order: GGUF (auto's tries after Q8_0), then GPTQ, AWQ
    assert list(exports)[:3] == ["gguf-F16", "gguf-Q8_0", "gguf-Q4_K_M"] and list(exports)[-2:] == ["gptq-W4G32", "awq-W4G32"]
    assert [v[2] for v in exports.values()][2:-2] in (["picked"], ["tried", "picked"], ["tried", "tried"]), exports
    # A file its perplexity already rejected is not asked the rows: no task score to pair (the reason says so).
    asked = [c for c, (_, reason, _) in exports.items() if "task rows not asked" not in reason]
    assert run["task_candidates"] == ["base", "sft", "dpo", "merged", *asked]
    # MMLU, GSM8K and perplexity ran on every candidate (benchmark_candidates: all), the merged model and the export
    # that ships (the smallest passing GGUF file); every other export says they were not run. The final adapter
    # (dpo) is measured once, as the merged model, which then stands for it in the forgetting checks.
    assert set(run["perplexity_candidates"]) == {"base", "sft", "merged", *exports}
    passed = [name for name, (ok, _, _) in exports.items() if ok]
    shipped = [run["shipped"]] if run["shipped"] else []
    assert run["benchmark_candidates"] == {c: ["gsm8k", "mmlu"] for c in ["sft", "merged", *shipped]}
    assert run["forgetting_on"] == "merged" and run["forgetting_is_merged"], run
    assert all(note.startswith("not run") for c, note in run["benchmarks_notes"].items() if c not in shipped), run
    assert not shipped or any(r.startswith(f"ships {shipped[0]} ") for r in run["decision"]["reasons"]), run["decision"]
    # The smallest GGUF file that passed was served and asked through the openai client; the summary says so.
    if any(n.startswith("gguf") for n in passed):
        assert "served by llama.cpp's OpenAI-compatible server" in out, out[-3000:]
    # The tiny model learns nothing: the run must end with a reason, not an exception.
    assert run["decision"]["promote"] is False and "not promoted because" in out
    assert run["sft_adapter_mb"] < 5, "the adapter artifact must not carry the base model"
    # Each trainer's final checkpoint is an artifact of its step (a new pod resumes from it).
    assert all(len(v) == 1 and v[0].startswith(f"checkpoint-{s[6:]}-") for s, v in run["checkpoints"].items()), run["checkpoints"]
    assert run["rejected_rows"] > 0 and run["data_validation"]["gate_failures"] == []
    # The merged model's card: lineage (the raw data's hash, the adapter, the training config) and the evaluation.
    card = run["model_card"]
    assert run["data_sha256"] and f'data_sha256: `"{run["data_sha256"]}"`' in card, card
    assert "adapter_kind: `\"dpo\"`" in card and '"method": "lora"' in card and "## Evaluation" in card
    assert all(f"| {c} |" in card for c in ("base", "sft", "dpo")), card
    assert "after this merge (the `score_merged` step)" in card, "the final benchmarks come after the card"
    assert {"data_report", "sft_loss_curve", "dpo_loss_curve", "evaluation_report", "final_report"} <= set(run["visualizations"])
    # bench/default_run.py reads the same run: every step's time, SFT's tokens/s, each candidate's rows/s.
    bench = run["bench"]
    assert set(bench["steps"]) == set(STEPS) and all(t > 0 for t in bench["steps"].values()), bench
    assert bench["sft_tokens_per_s"] > 0 and bench["throughput"]["task base rows/s"] > 0, bench


def test_rerun_is_cached(first_run):
    _, run = _run(PROJECT_ROOT / "configs" / "tiny.yaml")
    assert {n: s for n, s in run["steps"].items() if n != "promote"} == {n: "cached" for n in STEPS if n != "promote"}
    assert run["steps"]["promote"] == "completed", "the promotion decision is never cached"


def test_bootstrap_change_reruns_the_evaluation_not_the_exports(first_run, tmp_path):
    """evaluate.bootstrap_resamples changes the CIs only: the evaluation re-runs, and so does the merge (its
    model card shows the evaluation table), but the merged weights are the same, so no export re-runs; the base's
    scores (evaluate_base) do not depend on it and come from the cache."""
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    raw["parameters"]["config"].setdefault("evaluate", {})["bootstrap_resamples"] = 1000
    changed = tmp_path / "tiny-bootstrap.yaml"
    changed.write_text(yaml.safe_dump(raw))
    _, run = _run(changed)
    rerun = {"evaluate", "merge", "promote"}
    assert {n: s for n, s in run["steps"].items() if n in rerun} == {n: "completed" for n in rerun}, run["steps"]
    assert {n: s for n, s in run["steps"].items() if n not in rerun} == {n: "cached" for n in STEPS if n not in rerun}


def test_dpo_change_reruns_dpo_and_downstream_only(first_run, tmp_path):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    raw["parameters"]["config"]["dpo"]["beta"] = 0.2
    changed = tmp_path / "tiny-dpo.yaml"
    changed.write_text(yaml.safe_dump(raw))
    _, run = _run(changed)
    before, after = STEPS[:STEPS.index("train_dpo")], STEPS[STEPS.index("train_dpo"):]  # evaluate_base stays cached
    assert all(run["steps"][s] == "cached" for s in before), run["steps"]
    assert all(run["steps"][s] == "completed" for s in after), run["steps"]


def test_failing_data_gate_stops_before_training_and_keeps_the_report(first_run, tmp_path):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    raw["parameters"]["config"]["data"]["gate"] = {"max_rejected_fraction": 0.001}
    strict = tmp_path / "tiny-strict.yaml"
    strict.write_text(yaml.safe_dump(raw))
    p = _zenml("pipeline", "run", "pipelines.finetune.finetune", "-c", str(strict))
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode != 0 and "data validation gate failed" in out and "data.gate.max_rejected_fraction=0.001" in out
    run = _last_run_steps()
    assert run["validate_data"] == "completed" and "train_sft" not in run, run


def test_failed_export_fails_only_its_step_and_a_fixed_rerun_redoes_only_it(first_run, tmp_path):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    raw["parameters"]["config"]["quantize"] = {"group_size": 256}  # the tiny model's hidden size is 64
    bad = tmp_path / "tiny-quant-bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    p = _zenml("pipeline", "run", "pipelines.finetune.finetune", "-c", str(bad))
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode != 0 and "not a multiple of group_size 256" in out and "quantize.group_size to 64" in out, out[-3000:]
    steps = _last_run_steps()
    assert steps["merge"] == steps["export_gguf"] == "cached" and steps["export_gptq"] == "failed", steps
    assert "promote" not in steps
    raw["parameters"]["config"]["quantize"] = {"group_size": 64}
    fixed = tmp_path / "tiny-quant-fixed.yaml"
    fixed.write_text(yaml.safe_dump(raw))
    _, run = _run(fixed)
    redone = {"export_gptq", "export_awq", "promote"}
    assert all(run["steps"][s] == "completed" for s in redone), run["steps"]
    assert all(run["steps"][s] == "cached" for s in set(STEPS) - redone), run["steps"]
    assert {"gptq-W4G64", "awq-W4G64"} <= set(run["task_candidates"])


def _last_run_steps() -> dict:
    code = ("import json; from zenml.client import Client; r = Client().list_pipeline_runs(sort_by='desc:created', size=1, "
            "hydrate=True)[0]; print('JSON' + json.dumps({n: str(s.status) for n, s in r.steps.items()}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=os.environ.copy(), capture_output=True, text=True)
    return json.loads([x for x in p.stdout.splitlines() if x.startswith("JSON")][0][4:])


def test_bad_config_fails_before_any_step(tmp_path):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    raw["parameters"]["config"]["sft"]["lerning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    p = _zenml("pipeline", "run", "pipelines.finetune.finetune", "-c", str(bad))
    assert p.returncode != 0
    out = " ".join((p.stdout + p.stderr).split())  # the CLI wraps long lines
    assert "lerning_rate" in out and "did you mean 'learning_rate'" in out
    assert "Step prepare_base has started" not in out
