"""Compile the tuneline pipeline to a Kubeflow Pipelines v2 IR YAML, offline: no cluster, no Docker.

    python scripts/compile_kubeflow.py                       # configs/default.yaml + configs/env/kubeflow.yaml
    python scripts/compile_kubeflow.py -c configs/full.yaml -o build/full_kfp.yaml
    python scripts/compile_kubeflow.py --merged-config build/run.yaml   # also write the merged run config
    python scripts/compile_kubeflow.py --submit              # real run on your active Kubeflow stack

Needs the `kubeflow` extra (`pip install -e '.[kubeflow]'`: kfp 2.16.1, kfp-kubernetes 2.16.1).

It runs ZenML's own code path, `pipeline.with_options(config_path=...)()` on a Kubeflow stack: ZenML
builds the snapshot (step settings, resources, images, dependencies) and `KubeflowOrchestrator.
submit_pipeline` compiles it with kfp's `Compiler` and writes the YAML. For the offline compile,
in this process only:
- the stack lives in a throw-away local ZenML store (a temporary ZENML_CONFIG_PATH, run from a
  temporary directory so the repository's .zen/ is not touched), never yours;
- `KubeflowOrchestrator._upload_and_run_pipeline` is replaced: the YAML is copied to --output instead
  of being uploaded to a KFP API;
- the orchestrator's "no local components" check and ZenML's "remote orchestrator needs a ZenML
  server" check are off (the compile needs neither; a real run does, see docs/kubeflow.md).
Images are not built: configs/env/kubeflow.yaml names prebuilt images with `skip_build: true`.

One fix applies to the compile and to --submit: ZenML 0.98's `KubeflowOrchestratorSettings` rebuilds
`pod_settings` from its legacy top-level `node_selectors` key on every validation, and ZenML's settings
filter drops that key, so `node_selectors: {accelerator: ...}` never reaches the orchestrator and every
GPU request is silently dropped from the KFP YAML. `fixed_kubeflow_settings()` keeps `pod_settings`.
A second one, also for both: ZenML drops every other pod setting with KFP 2.x, so the pod security context of
configs/env/kubeflow.yaml (`pod_settings.additional_pod_spec_args.security_context`) is applied to each task with
kfp-kubernetes' `set_security_context` (runAsUser, runAsGroup, runAsNonRoot: what KFP lets a pipeline set; the
KFP backend enforces no privilege escalation, all capabilities dropped and RuntimeDefault seccomp itself).

Per-run values (the store URL, an API token against a server, stack/user ids, the snapshot id, the
run name) are replaced by placeholders in the written YAML, so the file is reproducible; a real
submission sets them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tuneline.config import read_run

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"
DEFAULT_ENV = PROJECT_ROOT / "configs" / "env" / "kubeflow.yaml"
DEFAULT_OUTPUT = PROJECT_ROOT / "build" / "finetune_kfp.yaml"
# Environment variables ZenML sets per run; their compile-time values mean nothing on a cluster.
RUNTIME_ENV_PREFIXES = ("ZENML_STORE_", "ZENML_SECRETS_STORE_", "ZENML_ACTIVE_", "ZENML_USER_ID",
                        "ZENML_PIPELINE_RUN_ID")
PLACEHOLDER = "<set by ZenML at submission>"
SNAPSHOT_PLACEHOLDER = "<snapshot id>"


def merged_run_config(config: Path, env: Path | None) -> dict:
    """The run config with the overlay merged over it (tuneline config merge's rule: later wins)."""
    return read_run([config] if env is None else [config, env])


def normalize(doc: dict) -> dict:
    """Placeholders for the per-run values of a compiled pipeline (env, snapshot id, run name)."""
    run_name = doc.get("pipelineInfo", {}).get("name", "")

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) >= {"name", "value"} and str(node["name"]).startswith(RUNTIME_ENV_PREFIXES):
                return {**node, "value": PLACEHOLDER}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            out = [walk(v) for v in node]
            for i in range(len(out) - 1):
                if out[i] == "--snapshot_id":
                    out[i + 1] = SNAPSHOT_PLACEHOLDER
            return out
        if isinstance(node, str) and run_name and run_name in node:
            return node.replace(run_name, "finetune-<run>")
        return node

    return walk(doc)


def fixed_kubeflow_settings():
    """KubeflowOrchestratorSettings whose `pod_settings` survive validation (ZenML 0.98 drops them)."""
    from pydantic import model_validator
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    class FixedKubeflowOrchestratorSettings(KubeflowOrchestratorSettings):
        @model_validator(mode="before")
        @classmethod
        def _validate_and_migrate_pod_settings(cls, data: Any) -> Any:  # replaces the parent's validator
            if not isinstance(data, dict):
                return data
            data = dict(data)
            legacy = data.pop("node_selectors", None) or {}
            if data.pop("node_affinity", None):
                raise ValueError("node_affinity: use pod_settings.affinity")
            pod = data.get("pod_settings") or {}
            if isinstance(pod, KubernetesPodSettings):
                pod = pod.model_dump(exclude_unset=True)
            if legacy:
                pod = {**pod, "node_selectors": {**(pod.get("node_selectors") or {}), **legacy}}
            if pod:
                # Applied by security_context_patch() instead (ZenML would only warn that it ignores them).
                pod = {k: v for k, v in pod.items() if k not in ("additional_pod_spec_args", "container_security_context")}
                data["pod_settings"] = pod
            if (data.get("client_username") is None) != (data.get("client_password") is None):
                raise ValueError("`client_username` and `client_password` both need to be set together.")
            return data

    return FixedKubeflowOrchestratorSettings


def _settings_patch():
    from unittest import mock

    from zenml.integrations.kubeflow.orchestrators import KubeflowOrchestrator

    fixed = fixed_kubeflow_settings()
    return mock.patch.object(KubeflowOrchestrator, "settings_class", property(lambda self: fixed))


def step_security_contexts(run_config: dict) -> dict[str, dict]:
    """{step: pod security context} from the run config: a step's pod_settings fields replace the pipeline's."""
    def pod_settings(settings: dict) -> dict:
        return ((settings or {}).get("orchestrator.kubeflow") or {}).get("pod_settings") or {}

    pipeline = pod_settings(run_config.get("settings"))
    out = {}
    for step, conf in (run_config.get("steps") or {}).items():
        merged = {**pipeline, **pod_settings((conf or {}).get("settings"))}
        sc = (merged.get("additional_pod_spec_args") or {}).get("security_context")
        if sc:
            out[step] = sc
    return out


def security_context_patch(run_config: dict):
    """Sets each task's security context (kfp.kubernetes.set_security_context) as ZenML names the task."""
    from unittest import mock

    from kfp import kubernetes
    from kfp.dsl import PipelineTask

    contexts = step_security_contexts(run_config)
    original = PipelineTask.set_display_name

    def set_display_name(self, name):  # noqa: ANN001 - kfp's signature; ZenML passes the step name
        task = original(self, name)
        sc = contexts.get(name)
        if sc:
            kubernetes.set_security_context(task, run_as_user=sc.get("runAsUser"), run_as_group=sc.get("runAsGroup"),
                                            run_as_non_root=sc.get("runAsNonRoot"))
        return task

    return mock.patch.object(PipelineTask, "set_display_name", set_display_name)


def _setup_env() -> None:
    os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
    os.environ["ZENML_ENABLE_REPO_INIT_WARNINGS"] = "false"
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(PROJECT_ROOT))


def compile_pipeline(config: Path = DEFAULT_CONFIG, env: Path | None = DEFAULT_ENV,
                     output: Path = DEFAULT_OUTPUT, registry: str = "registry.example.com/tuneline") -> Path:
    """Compile in this process against a temporary ZenML store; returns the written YAML path.

    Call it in a fresh process (the CLI below does): ZenML reads ZENML_CONFIG_PATH once.
    """
    config, output = Path(config).resolve(), Path(output).resolve()
    env = Path(env).resolve() if env else None
    work = tempfile.mkdtemp(prefix="tuneline-kfp-")
    os.environ["ZENML_CONFIG_PATH"] = str(Path(work) / "zenml")
    os.environ["ZENML_PREVENT_CLIENT_SIDE_CACHING"] = "true"  # never look up cached steps
    os.environ.pop("ZENML_STORE_URL", None)
    _setup_env()
    cwd = os.getcwd()
    os.chdir(work)  # no ZenML repository here: the project's .zen/ keeps its active stack
    try:
        return _compile(config, env, output, registry, Path(work))
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


def _compile(config: Path, env: Path | None, output: Path, registry: str, work: Path) -> Path:
    from unittest import mock

    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorConfig
    from zenml.integrations.kubeflow.orchestrators import KubeflowOrchestrator
    from zenml.stack import StackValidator
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(PROJECT_ROOT))
    client = Client()
    flavors = {f.name for f in client.get_flavors_by_type(StackComponentType.ORCHESTRATOR)}
    if "kubeflow" not in flavors:
        raise SystemExit("The kubeflow orchestrator flavor is not available: pip install -e '.[kubeflow]'")
    for name, kind, flavor, conf in [
        ("kubeflow", StackComponentType.ORCHESTRATOR, "kubeflow", {"kubeflow_hostname": "https://kubeflow.invalid/pipeline"}),
        ("registry", StackComponentType.CONTAINER_REGISTRY, "default", {"uri": registry}),
        ("builder", StackComponentType.IMAGE_BUILDER, "local", {}),
    ]:
        client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=conf)
    client.create_stack("kubeflow", components={
        StackComponentType.ORCHESTRATOR: "kubeflow",
        StackComponentType.ARTIFACT_STORE: "default",
        StackComponentType.CONTAINER_REGISTRY: "registry",
        StackComponentType.IMAGE_BUILDER: "builder",
    })
    client.activate_stack("kubeflow")

    run_config = work / "run_config.yaml"
    merged = merged_run_config(config, env)
    run_config.write_text(yaml.safe_dump(merged, sort_keys=False))
    written: list[str] = []

    def _capture(self, snapshot, pipeline_file_path, run_name):  # noqa: ANN001 - ZenML's signature
        written.append(pipeline_file_path)

    # The compile needs a container registry and an image builder in the stack, nothing else.
    validator = StackValidator(required_components={StackComponentType.CONTAINER_REGISTRY,
                                                    StackComponentType.IMAGE_BUILDER})
    assert hasattr(KubeflowOrchestrator, "_upload_and_run_pipeline"), "ZenML changed: update this script"
    from pipelines.finetune import finetune

    with _settings_patch(), security_context_patch(merged), \
         mock.patch.object(KubeflowOrchestrator, "_upload_and_run_pipeline", _capture), \
         mock.patch.object(KubeflowOrchestrator, "validator", property(lambda self: validator)), \
         mock.patch.object(KubeflowOrchestratorConfig, "is_remote", property(lambda self: False)):
        finetune.with_options(config_path=str(run_config))()
    if len(written) != 1:
        raise RuntimeError(f"expected one compiled pipeline file, got {written}")
    # The pipeline spec, then (with the security context) its Kubernetes platform spec: two YAML documents.
    docs = [normalize(d) for d in yaml.safe_load_all(Path(written[0]).read_text()) if d]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return output


def submit(config: Path, env: Path | None) -> None:
    """A real run on the active stack (a Kubeflow one), with the pod settings fix; no other patch."""
    _setup_env()
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(PROJECT_ROOT))
    with tempfile.TemporaryDirectory(prefix="tuneline-kfp-") as work:
        run_config = Path(work) / "run_config.yaml"
        merged = merged_run_config(config, env)
        run_config.write_text(yaml.safe_dump(merged, sort_keys=False))
        from pipelines.finetune import finetune

        with _settings_patch(), security_context_patch(merged):
            finetune.with_options(config_path=str(run_config))()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help="run config (default: %(default)s)")
    p.add_argument("--env", type=Path, default=DEFAULT_ENV, help="overlay merged over it (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="KFP IR YAML (default: %(default)s)")
    p.add_argument("--registry", default="registry.example.com/tuneline", help="container registry URI of the stack")
    p.add_argument("--merged-config", type=Path, help="also write the merged run config here")
    p.add_argument("--submit", action="store_true", help="run on the active (Kubeflow) stack instead of compiling")
    args = p.parse_args(argv)
    if args.merged_config:
        args.merged_config.parent.mkdir(parents=True, exist_ok=True)
        args.merged_config.write_text(yaml.safe_dump(merged_run_config(args.config, args.env), sort_keys=False))
        print(f"merged run config: {args.merged_config}")
    if args.submit:
        submit(args.config.resolve(), args.env.resolve() if args.env else None)
        return 0
    out = compile_pipeline(args.config, args.env, args.output, args.registry)
    print(f"KFP v2 pipeline: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
