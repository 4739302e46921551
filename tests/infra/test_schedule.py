"""The weekly retraining schedule: what ZenML 0.98's Kubernetes orchestrator creates, without a cluster.

The real pipeline (pipelines/finetune.py) is compiled by ZenML's own Compiler with
configs/default.yaml + configs/env/kubernetes.yaml + configs/schedule.yaml on an in-memory stack
whose orchestrator is configured as scripts/register_stack.sh registers it. Then:

- `KubernetesOrchestrator.submit_pipeline` runs with the Kubernetes client intercepted (its
  create_* methods record the bodies; no kubeconfig is loaded): it creates the API-token Secret
  and the CronJob, both validated against the Kubernetes schema;
- each step's Job is built the way the orchestrator pod builds it (kubernetes_orchestrator_entrypoint
  runs inside the cluster, so its manifest functions are called here with the same arguments; a
  check on its source catches a ZenML change to that path) and validated too.

Asserted: the CronJob runs our cron with concurrencyPolicy Forbid and our history limits, the API
token reaches pods only through a Secret (secretKeyRef), and the GPU node selector, toleration and
nvidia.com/gpu limits reach the GPU step pods (ZenML issue #4802: step pod settings ignored in 0.94.x).
"""

import base64
import copy
import inspect
import json
import re
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import yaml

from tuneline.config import write_run
from tuneline.paths import PROJECT_ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[k8s]'")
pytest.importorskip("kubernetes", reason="pip install -e '.[k8s]'")

CONFIGS = [PROJECT_ROOT / "configs" / "default.yaml", PROJECT_ROOT / "configs" / "env" / "kubernetes.yaml",
           PROJECT_ROOT / "configs" / "schedule.yaml"]
CRON = "0 3 * * 1"
K8S_VERSION = "1.33.0"
TOKEN = "test-api-token-3f9c2a"  # stands for the workload token ZenML generates for the schedule
STORE_URL = "https://zenml.example.com"
GPU_STEPS = {"train_sft", "train_reward", "train_dpo", "evaluate_base", "evaluate", "score_merged", "export_gptq", "export_awq"}
GPU_IMAGE_STEPS = GPU_STEPS | {"merge", "export_gguf"}
IMAGES = {"docker/Dockerfile.cpu": "registry.example.com/ml/tuneline:cpu-build",
          "docker/Dockerfile.gpu": "registry.example.com/ml/tuneline:gpu-build"}


def orchestrator_flags() -> dict[str, str]:
    """The `--key=value` flags scripts/register_stack.sh registers the orchestrator with."""
    script = (PROJECT_ROOT / "scripts" / "register_stack.sh").read_text()
    block = script.split('register_or_update orchestrator "$ORCHESTRATOR"', 1)[1].split("\n\n", 1)[0]
    flags = dict(re.findall(r"--([a-z_]+)=(\S+)", block))
    defaults = {'"$K8S_NAMESPACE"': "tuneline", '"$K8S_CONTEXT"': "test-context"}
    return {k: defaults.get(v, v) for k, v in flags.items()}


def without_nulls(value):
    """What the API server keeps: null fields are unset. (ZenML merges container_security_context into
    a snake_case to_dict() of the default context, leaving keys like `run_as_user: null` beside the
    camelCase ones; the server drops those unknown, null fields.)"""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def validate(obj: dict) -> dict:
    clean = without_nulls(obj)
    kubernetes_validate.validate(clean, K8S_VERSION, strict=True)
    return clean


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from zenml.client import Client

    repo = tmp_path_factory.mktemp("zenml-repo")
    (repo / ".zen").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        # A throwaway repository: the checkout's .zen/config.yaml is never rewritten by this test.
        mp.setenv("ZENML_REPOSITORY_PATH", str(repo))
        Client._reset_instance()
        try:
            yield compile_pipeline(tmp_path_factory.mktemp("run"))
        finally:
            Client._reset_instance()


def compile_pipeline(tmp):
    from zenml.artifact_stores.local_artifact_store import LocalArtifactStore, LocalArtifactStoreConfig
    from zenml.config.compiler import Compiler
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.container_registries.base_container_registry import BaseContainerRegistry, BaseContainerRegistryConfig
    from zenml.enums import StackComponentType
    from zenml.image_builders.local_image_builder import LocalImageBuilder, LocalImageBuilderConfig
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorConfig
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator
    from zenml.stack import Stack

    from pipelines.finetune import finetune

    now = datetime.now(timezone.utc)

    def component(cls, config, flavor, kind, name):
        return cls(name=name, id=uuid.uuid4(), config=config, flavor=flavor, type=kind, user=None, created=now,
                   updated=now)

    flags = orchestrator_flags()
    orchestrator = component(KubernetesOrchestrator, KubernetesOrchestratorConfig(
        kubernetes_context=flags["kubernetes_context"], kubernetes_namespace=flags["kubernetes_namespace"],
        pass_zenml_token_as_secret=flags["pass_zenml_token_as_secret"] == "True",
        service_account_name=flags["service_account_name"],
        step_pod_service_account_name=flags["step_pod_service_account_name"],
    ), "kubernetes", StackComponentType.ORCHESTRATOR, "tuneline-k8s-orchestrator")
    stack = Stack(
        id=uuid.uuid4(), name="tuneline-k8s", orchestrator=orchestrator,
        artifact_store=component(LocalArtifactStore, LocalArtifactStoreConfig(path=str(tmp / "artifacts")), "local",
                                 StackComponentType.ARTIFACT_STORE, "artifacts"),
        container_registry=component(BaseContainerRegistry, BaseContainerRegistryConfig(uri="registry.example.com/ml"),
                                     "default", StackComponentType.CONTAINER_REGISTRY, "registry"),
        image_builder=component(LocalImageBuilder, LocalImageBuilderConfig(), "local",
                                StackComponentType.IMAGE_BUILDER, "builder"),
    )
    config_path = write_run(CONFIGS, tmp / "weekly.yaml")
    run_config = PipelineRunConfiguration.model_validate(yaml.safe_load(config_path.read_text()))
    pipeline = finetune.with_options(config_path=str(config_path))
    pipeline._prepare_if_possible()
    snapshot = Compiler().compile(pipeline=pipeline, stack=stack, run_configuration=run_config)
    return SimpleNamespace(snapshot=snapshot, orchestrator=orchestrator, stack=stack, run_config=run_config)


@pytest.fixture(scope="module")
def build(compiled):
    """The images ZenML would build: one build per distinct DockerSettings, as the orchestrator asks."""
    from zenml.models import BuildItem, PipelineBuildBase

    images = {}
    for item in compiled.orchestrator.get_docker_builds(compiled.snapshot):
        key = f"{item.step_name}.{item.key}" if item.step_name else item.key
        images[key] = BuildItem(image=IMAGES[item.settings.dockerfile], contains_code=False)
    return PipelineBuildBase(images=images, is_local=False, contains_code=False)


@pytest.fixture(scope="module")
def snapshot(compiled, build):
    """The compiled snapshot as the server returns it (the fields the orchestrator reads)."""
    return SimpleNamespace(id=uuid.uuid4(), project_id=uuid.uuid4(), build=build,
                           pipeline_configuration=compiled.snapshot.pipeline_configuration,
                           step_configurations=compiled.snapshot.step_configurations,
                           schedule=compiled.run_config.schedule)


@pytest.fixture(scope="module")
def submitted(compiled, snapshot):
    """Run submit_pipeline with the Kubernetes client intercepted; returns {kind: (namespace, body)}."""
    import zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator as orchestrator_module
    from kubernetes import client as k8s_client
    from zenml.integrations.kubernetes import kube_utils

    created = {}

    def record(kind):
        def create(self, namespace=None, body=None, **kwargs):
            created[kind] = (namespace, k8s_client.ApiClient().sanitize_for_serialization(body))
            return SimpleNamespace(metadata=SimpleNamespace(name=created[kind][1]["metadata"]["name"]))
        return create

    def refuse(*args, **kwargs):
        raise AssertionError("a scheduled submission must not create a Job or any other object")

    user = SimpleNamespace(id=uuid.uuid4(), oidc_claims={})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kube_utils, "load_kube_config", lambda **kwargs: None)  # no kubeconfig, no cluster
        mp.setattr(orchestrator_module, "Client", lambda: SimpleNamespace(active_user=user))
        mp.setattr(k8s_client.BatchV1Api, "create_namespaced_cron_job", record("CronJob"))
        mp.setattr(k8s_client.CoreV1Api, "create_namespaced_secret", record("Secret"))
        mp.setattr(k8s_client.BatchV1Api, "create_namespaced_job", refuse)
        mp.setattr(k8s_client.CoreV1Api, "create_namespaced_pod", refuse)
        mp.setattr(k8s_client.RbacAuthorizationV1Api, "create_namespaced_role_binding", refuse)
        compiled.orchestrator._k8s_client = None
        result = compiled.orchestrator.submit_pipeline(
            snapshot=snapshot, stack=compiled.stack, step_environments={}, placeholder_run=None,
            base_environment={"ZENML_STORE_URL": STORE_URL, "ZENML_STORE_API_TOKEN": TOKEN,
                              "ZENML_DISABLE_CREDENTIALS_DISK_CACHING": "true"},
        )
    assert result.metadata == {"cron_job_name": created["CronJob"][1]["metadata"]["name"]}
    return created


def test_schedule_file_uses_only_zenml_keys():
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.config.schedule import Schedule
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "schedule.yaml").read_text())
    assert set(raw) <= set(PipelineRunConfiguration.model_fields)
    assert set(raw["schedule"]) <= set(Schedule.model_fields), "Schedule silently ignores unknown keys"
    assert Schedule(**raw["schedule"]).cron_expression == CRON
    settings = KubernetesOrchestratorSettings.model_validate(raw["settings"]["orchestrator.kubernetes"])
    assert not settings.model_extra and settings.concurrency_policy == "Forbid"


def test_cron_job(submitted):
    namespace, cron_job = submitted["CronJob"]
    assert namespace == "tuneline"
    cron_job = validate(cron_job)
    spec = cron_job["spec"]
    assert spec["schedule"] == CRON
    assert spec["concurrencyPolicy"] == "Forbid"
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 5)
    assert spec["startingDeadlineSeconds"] == 21600
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    [main] = pod["containers"]
    # The CronJob runs the orchestrator pod, which starts the step Jobs itself.
    assert main["command"][-1] == "zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator_entrypoint"
    assert main["image"] == IMAGES["docker/Dockerfile.cpu"]
    assert pod["serviceAccountName"] == "zenml-orchestrator"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(main["resources"][part])


def test_api_token_goes_through_a_secret(submitted):
    _, cron_job = submitted["CronJob"]
    namespace, secret = submitted["Secret"]
    assert TOKEN not in json.dumps(cron_job), "the API token is inline in the CronJob"
    env = {e["name"]: e for e in cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["ZENML_STORE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert "value" not in env["ZENML_STORE_API_TOKEN"]
    assert env["ZENML_STORE_URL"]["value"] == STORE_URL
    secret["metadata"]["namespace"] = namespace  # passed beside the body by ZenML
    validate(secret)
    assert namespace == "tuneline" and secret["metadata"]["name"] == ref["name"]
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == TOKEN
    assert set(secret["data"]) == {ref["key"]}


def step_job(compiled, snapshot, step_name: str) -> dict:
    """A step's Job as kubernetes_orchestrator_entrypoint.main's start_step_job builds it (0.98)."""
    from kubernetes import client as k8s_client
    from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.constants import KUBERNETES_SECRET_TOKEN_KEY_NAME
    from zenml.integrations.kubernetes.manifest_utils import (
        build_job_manifest,
        build_pod_manifest,
        pod_template_manifest_from_pod,
    )
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator

    orchestrator = compiled.orchestrator
    settings = orchestrator.get_settings(snapshot.step_configurations[step_name])
    pod_settings = kube_utils.apply_default_resource_requests(memory="400Mi", pod_settings=settings.pod_settings)
    assert orchestrator.config.pass_zenml_token_as_secret
    pod_settings.env.append({"name": "ZENML_STORE_API_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": orchestrator.get_token_secret_name(snapshot.id), "key": KUBERNETES_SECRET_TOKEN_KEY_NAME}}})
    pod = build_pod_manifest(
        pod_name=None,
        image_name=KubernetesOrchestrator.get_image(snapshot=snapshot, step_name=step_name),
        command=StepEntrypointConfiguration.get_entrypoint_command(),
        args=StepEntrypointConfiguration.get_entrypoint_arguments(step_name=step_name, snapshot_id=snapshot.id),
        env={"ZENML_STORE_URL": STORE_URL, "ZENML_KUBERNETES_RUN_ID": "orchestrator-pod"},
        privileged=settings.privileged,
        pod_settings=pod_settings,
        service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
        mount_local_stores=orchestrator.config.is_local,
        termination_grace_period_seconds=settings.pod_stop_grace_period,
        labels={"step_name": step_name},
        annotations={},
    )
    job = build_job_manifest(job_name=f"tuneline-{step_name}".replace("_", "-"),
                             pod_template=pod_template_manifest_from_pod(pod), backoff_limit=0,
                             ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
                             active_deadline_seconds=settings.active_deadline_seconds,
                             pod_failure_policy=settings.pod_failure_policy)
    body = k8s_client.ApiClient().sanitize_for_serialization(job)
    return {"apiVersion": "batch/v1", "kind": "Job", **body}


def test_step_job_rendering_follows_zenml_entrypoint():
    """step_job above mirrors start_step_job; fail loudly if ZenML changes that code path."""
    from zenml.integrations.kubernetes.orchestrators import kubernetes_orchestrator_entrypoint as entrypoint

    source = re.sub(r"\s+", "", inspect.getsource(entrypoint.main))
    for fragment in (
        # per-step settings through get_settings (the #4802 fix), not a hard-coded settings key
        "orchestrator.get_settings(snapshot.step_configurations[step_name])",
        'kube_utils.apply_default_resource_requests(memory="400Mi",pod_settings=settings.pod_settings,)',
        "pod_settings=pod_settings,",
        "service_account_name=settings.step_pod_service_account_name",
        '"secretKeyRef":{"name":secret_name,"key":KUBERNETES_SECRET_TOKEN_KEY_NAME,}',
        "image=KubernetesOrchestrator.get_image(snapshot=snapshot,step_name=step_name)",
    ):
        assert fragment in source, f"ZenML's step pod code changed ({fragment}): re-check test_schedule.step_job"


def test_step_pods_get_their_settings(compiled, snapshot):
    steps = list(snapshot.step_configurations)
    assert len(steps) == 16
    for step in steps:
        job = validate(step_job(compiled, snapshot, step))
        pod = job["spec"]["template"]["spec"]
        [main] = pod["containers"]
        assert main["image"] == IMAGES["docker/Dockerfile.gpu" if step in GPU_IMAGE_STEPS else "docker/Dockerfile.cpu"]
        assert {"cpu", "memory"} <= set(main["resources"]["requests"]), step
        assert {"cpu", "memory"} <= set(main["resources"]["limits"]), step
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["serviceAccountName"] == "zenml-step" and pod["automountServiceAccountToken"] is False
        assert TOKEN not in json.dumps(job)
        env = {e["name"]: e for e in main["env"]}
        assert "secretKeyRef" in env["ZENML_STORE_API_TOKEN"]["valueFrom"]
        if step in GPU_STEPS:
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, step
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert main["resources"]["requests"]["nvidia.com/gpu"] == "1"
        else:
            assert "nodeSelector" not in pod and "tolerations" not in pod, step
            assert "nvidia.com/gpu" not in main["resources"]["limits"], step
        if step in {"train_sft", "train_dpo"}:
            cache = {"name": "tuneline-cache", "persistentVolumeClaim": {"claimName": "tuneline-cache"}}
            assert cache in pod["volumes"]
            assert {"name": "tuneline-cache", "mountPath": "/home/tuneline/.cache/tuneline"} in main["volumeMounts"]


def test_zenml_security_context_merge_leaves_null_snake_case_keys(compiled, snapshot):
    """Documents the quirk without_nulls() handles: harmless (unknown null fields are dropped)."""
    main = step_job(compiled, snapshot, "train_sft")["spec"]["template"]["spec"]["containers"][0]
    raw = copy.deepcopy(main["securityContext"])
    extra = {k for k in raw if "_" in k}
    assert all(raw[k] is None for k in extra), f"non-null snake_case keys {extra}: the API server would drop them"


def test_no_step_asks_for_resource_settings(compiled):
    """ResourceSettings would only earn a warning per step from this orchestrator: none are set."""
    for name, step in compiled.snapshot.step_configurations.items():
        assert not compiled.orchestrator.requires_resources_in_orchestration_environment(step), name


def test_data_steps_cache_on_the_data_files(compiled):
    policy = compiled.snapshot.step_configurations["validate_data"].config.cache_policy
    assert policy.file_dependencies
    for path in policy.file_dependencies:
        assert (PROJECT_ROOT / path).is_file(), path
    assert compiled.snapshot.step_configurations["promote"].config.enable_cache is False
