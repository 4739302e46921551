"""k8s/ and configs/env/kubernetes.yaml, checked offline.

Every overlay is rendered by the real `kubectl kustomize` (Debian's kubectl package; .ci/run installs it)
and every object validated against the Kubernetes schemas kubernetes-validate bundles.
Then: requests and limits on every container, runAsNonRoot everywhere, no secret value anywhere
(references only, and each referenced key documented in k8s/secrets/*.env.example), and RBAC that
covers every Kubernetes API call ZenML 0.98's orchestrator code makes (found by reading its source).
The run-config overlay is loaded with ZenML's own settings classes, so a wrong key fails here.
Hub models (k8s/components/hub + configs/env/kubernetes-hub.yaml): the step pods ZenML would create are
rendered offline (tests/infra/test_schedule.py's machinery) and checked for the online switch, HF_HOME on
the hub cache volume and HF_TOKEN from an optional Secret, and for the hardening the NetworkPolicies and the
ResourceQuota rely on: a read-only root filesystem with writable emptyDirs, ephemeral storage and the
tuneline.io/component label (the rest of the hardening: tests/infra/test_k8s_hardening.py); no hub is reached.
"""

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tuneline.config import load, write_run
from tuneline.paths import PROJECT_ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[k8s]'")
pytest.importorskip("kubernetes", reason="pip install -e '.[k8s]'")

K8S = PROJECT_ROOT / "k8s"
TUNELINE = Path(sys.executable).with_name("tuneline")  # the console script of this environment
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.33.0"  # a version every managed Kubernetes still supports; bundled by kubernetes-validate
PIPELINES_NAMESPACE = "tuneline"
KUBERNETES_YAML = PROJECT_ROOT / "configs" / "env" / "kubernetes.yaml"
HUB_YAML = PROJECT_ROOT / "configs" / "env" / "kubernetes-hub.yaml"
GPU_STEPS = {"train_sft", "train_reward", "train_dpo", "evaluate_base", "evaluate", "score_merged", "export_gptq", "export_awq"}
GPU_IMAGE_STEPS = GPU_STEPS | {"merge", "export_gguf"}
SECRETISH_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN$|SECRET$|SECRET_KEY|API_KEY|ENCRYPTION_KEY|PRIVATE_KEY|CREDENTIALS",
                            re.I)
SECRETISH_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|^[A-Fa-f0-9]{32,}$|^[A-Za-z0-9+/]{40,}={0,2}$")


def render(overlay) -> list[dict]:
    """The objects `kubectl kustomize OVERLAY` renders (what `kubectl apply -k` would send)."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is missing: apt-get install kubectl (Debian's package ships kustomize v5)")
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {overlay}: {out.stderr.strip()}"
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def pod_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return [spec["template"]["spec"]]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return [spec] if obj["kind"] == "Pod" else []


def containers(pod: dict) -> list[dict]:
    return pod.get("containers", []) + pod.get("initContainers", [])


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def all_objects() -> dict:
    return {o: render(K8S / "overlays" / o) for o in OVERLAYS}


def test_overlays_exist():
    assert {"local-db", "external-db", "ingress", "hub"} <= set(OVERLAYS)


def test_every_object_validates_against_the_schema(rendered):
    overlay, objects = rendered
    assert objects
    for obj in objects:
        # strict: unknown fields fail too (a typo would otherwise be dropped by the API server)
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_typo():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicaz": 1, "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_every_container_has_requests_and_limits(rendered):
    overlay, objects = rendered
    for obj in objects:
        for pod in pod_specs(obj):
            for c in containers(pod):
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(part, {})), \
                        f"{overlay}: {obj['kind']}/{obj['metadata']['name']} container {c['name']} lacks {part}"
    # Pods that ZenML or Kaniko create without limits get the namespace defaults.
    lr = [o for o in objects if o["kind"] == "LimitRange" and o["metadata"]["namespace"] == PIPELINES_NAMESPACE]
    assert lr and {"cpu", "memory"} <= set(lr[0]["spec"]["limits"][0]["default"])


def test_every_pod_runs_as_non_root(rendered):
    overlay, objects = rendered
    for obj in objects:
        for pod in pod_specs(obj):
            sc = pod.get("securityContext", {})
            where = f"{overlay}: {obj['metadata']['name']}"
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, where
            for c in containers(pod):
                csc = c.get("securityContext", {})
                assert csc.get("allowPrivilegeEscalation") is False and csc.get("capabilities") == {"drop": ["ALL"]}
                assert csc.get("runAsNonRoot", True) is True and not csc.get("privileged", False)


def test_no_secret_values_anywhere(rendered):
    overlay, objects = rendered
    documented = documented_secret_keys()
    for obj in objects:
        assert obj["kind"] != "Secret", f"{overlay}: Secret {obj['metadata']['name']}: create it out of band"
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                assert not SECRETISH_NAME.search(key) and not SECRETISH_VALUE.search(str(value))
        for pod in pod_specs(obj):
            for c in containers(pod):
                for env in c.get("env", []):
                    if "value" in env:
                        assert not SECRETISH_NAME.search(env["name"]), \
                            f"{overlay}: {env['name']} holds a literal value; use valueFrom.secretKeyRef"
                        assert not SECRETISH_VALUE.search(str(env["value"])) and "@" not in str(env["value"]), \
                            f"{overlay}: {env['name']}={env['value']!r} looks like a credential"
                    else:
                        ref = env["valueFrom"]["secretKeyRef"]
                        assert ref["key"] in documented.get(ref["name"], set()), \
                            f"{overlay}: secret {ref['name']}/{ref['key']} is not documented in k8s/secrets/"


def documented_secret_keys() -> dict[str, set[str]]:
    out = {}
    for example in (K8S / "secrets").glob("*.env.example"):
        keys = {line.split("=", 1)[0] for line in example.read_text().splitlines()
                if "=" in line and not line.startswith("#")}
        out[example.name.removesuffix(".env.example")] = keys
        assert all(line.endswith("=") for line in example.read_text().splitlines()
                   if "=" in line and not line.startswith("#")), f"{example}: templates carry no values"
    return out


def test_secret_files_are_git_ignored():
    assert "secrets/*.env" in (K8S / ".gitignore").read_text()
    tracked = subprocess.run(["git", "ls-files", "k8s"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert not re.search(r"\.env$", tracked, re.M)


def test_no_secret_literals_in_any_k8s_file():
    for path in K8S.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"^\s*(data|stringData):", text, re.M), f"{path}: secret data"
        assert not SECRETISH_VALUE.search(text), f"{path}: secret-looking literal"


# --- RBAC: the Kubernetes API calls of ZenML 0.98's orchestrator, read from its source ---------------

API_METHOD = re.compile(r"^(create|read|list|patch|delete|replace)_namespaced_([a-z_]+?)(_log|_status)?$")
RESOURCES = {"pod": ("", "pods"), "job": ("batch", "jobs"), "cron_job": ("batch", "cronjobs"),
             "secret": ("", "secrets"), "service_account": ("", "serviceaccounts"),
             "role_binding": ("rbac.authorization.k8s.io", "rolebindings"), "config_map": ("", "configmaps"),
             "service": ("", "services")}
VERBS = {"create": "create", "read": "get", "list": "list", "patch": "patch", "delete": "delete", "replace": "update"}


def api_calls(tree: ast.AST) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every kube client method named in `tree`, following kube_utils."""
    from zenml.integrations.kubernetes import kube_utils

    helpers = {n.name: n for n in ast.parse(inspect.getsource(kube_utils)).body if isinstance(n, ast.FunctionDef)}

    def direct(node):
        names, calls = set(), set()
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute):
                if API_METHOD.match(n.attr):
                    names.add(n.attr)
                if isinstance(n.value, ast.Name) and n.value.id == "kube_utils":
                    calls.add(n.attr)
            elif isinstance(n, ast.Name) and n.id in helpers:
                calls.add(n.id)
        return names, calls

    names, todo = direct(tree)
    seen = set()
    while todo:
        fn = todo.pop()
        if fn in seen or fn not in helpers:
            continue
        seen.add(fn)
        more, calls = direct(helpers[fn])
        names |= more
        todo |= calls
    out = set()
    for name in names:
        verb, resource, sub = API_METHOD.match(name).groups()
        group, plural = RESOURCES[resource]
        out.add((group, plural + ("/log" if sub == "_log" else ""), VERBS[verb]))
    return out


def granted(objects: list[dict], role: str) -> set[tuple[str, str, str]]:
    [obj] = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == role]
    assert obj["metadata"]["namespace"] == PIPELINES_NAMESPACE
    return {(g, r, v) for rule in obj["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_orchestrator_pod_rbac_covers_zenml_entrypoint(all_objects):
    """The orchestrator pod (and a schedule's CronJob pods) run kubernetes_orchestrator_entrypoint."""
    from zenml.integrations.kubernetes.orchestrators import kubernetes_orchestrator_entrypoint as entrypoint

    needed = api_calls(ast.parse(inspect.getsource(entrypoint)))
    assert ("batch", "jobs", "create") in needed and ("", "pods", "get") in needed  # the scan works
    for overlay, objects in all_objects.items():
        have = granted(objects, "zenml-orchestrator")
        assert needed <= have, f"{overlay}: zenml-orchestrator lacks {sorted(needed - have)}"
        binding = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "zenml-orchestrator"]
        assert binding[0]["subjects"] == [{"kind": "ServiceAccount", "name": "zenml-orchestrator",
                                           "namespace": PIPELINES_NAMESPACE}]


def test_submitter_rbac_covers_zenml_client_side(all_objects):
    """`zenml pipeline run` (and schedule update/delete, stop, status) through the user's kubeconfig."""
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator

    cls = ast.parse(inspect.getsource(KubernetesOrchestrator)).body[0]
    # Without service_account_name ZenML would create a service account and an `edit` RoleBinding
    # itself; configs/env/kubernetes.yaml and register_stack.sh always name k8s/'s account instead.
    methods = [m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name != "_get_service_account_name"]
    needed = set().union(*(api_calls(m) for m in methods))
    assert ("batch", "cronjobs", "create") in needed and ("", "secrets", "create") in needed
    # The Kaniko image builder: `kubectl run --stdin` (attach), `kubectl get pod`, `kubectl delete pod`.
    needed |= {("", "pods", "create"), ("", "pods/attach", "create"), ("", "pods", "get"),
               ("", "pods", "watch"), ("", "pods", "delete")}
    for overlay, objects in all_objects.items():
        have = granted(objects, "zenml-pipeline-submitter")
        assert needed <= have, f"{overlay}: zenml-pipeline-submitter lacks {sorted(needed - have)}"
        # and the orchestrator pod cannot create CronJobs or read Secrets
        assert not {r for g, r, v in granted(objects, "zenml-orchestrator")} & {"cronjobs", "rolebindings"}
        assert ("", "secrets", "get") not in granted(objects, "zenml-orchestrator")


# --- configs/env/kubernetes.yaml, through ZenML's own classes --------------------------------------


def overlay() -> dict:
    return yaml.safe_load(KUBERNETES_YAML.read_text())


def strict(model_cls, data: dict, where: str):
    """model_cls.model_validate(data), failing on keys ZenML would only warn about and drop."""
    model = model_cls.model_validate(data)
    assert not model.model_extra, f"{where}: unknown keys {sorted(model.model_extra)} for {model_cls.__name__}"
    return model


def check_pod_settings(pod: dict, where: str):
    from kubernetes import client as k8s_client
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings
    from zenml.integrations.kubernetes.serialization_utils import deserialize_kubernetes_model

    settings = strict(KubernetesPodSettings, pod, where)
    # Kubernetes models are plain dicts in ZenML's settings (it only warns on a bad key): check them here.
    for field, cls_name in [("tolerations", "V1Toleration"), ("volumes", "V1Volume"),
                            ("volume_mounts", "V1VolumeMount"), ("env", "V1EnvVar")]:
        for item in getattr(settings, field):
            deserialize_kubernetes_model(item, cls_name)
    if settings.resources:
        deserialize_kubernetes_model(settings.resources, "V1ResourceRequirements")
    if settings.container_security_context:
        deserialize_kubernetes_model(settings.container_security_context, "V1SecurityContext")
    for key, value in settings.additional_pod_spec_args.items():
        assert key in k8s_client.V1PodSpec.openapi_types, f"{where}: {key} is not a V1PodSpec attribute (snake_case)"
    if "security_context" in settings.additional_pod_spec_args:
        deserialize_kubernetes_model(settings.additional_pod_spec_args["security_context"], "V1PodSecurityContext")
    return settings


def test_kubernetes_overlay_loads_with_zenml_classes():
    from zenml.config.docker_settings import DockerSettings
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    raw = overlay()
    PipelineRunConfiguration.model_validate(raw)
    assert set(raw) <= set(PipelineRunConfiguration.model_fields)
    levels = [("pipeline", raw["settings"])] + [(name, s.get("settings", {})) for name, s in raw["steps"].items()]
    for where, settings in levels:
        # ResourceSettings are ignored by this orchestrator (a warning per step): pod resources instead.
        assert set(settings) <= {"docker", "orchestrator.kubernetes"}, f"{where}: {set(settings)}"
        if "docker" in settings:
            docker = strict(DockerSettings, settings["docker"], where)
            assert (PROJECT_ROOT / docker.dockerfile).is_file()
            assert (PROJECT_ROOT / docker.parent_image_build_config.dockerignore).is_file()
            assert docker.install_stack_requirements is False and docker.allow_including_files_in_images is False
        if "orchestrator.kubernetes" in settings:
            k8s = strict(KubernetesOrchestratorSettings, settings["orchestrator.kubernetes"], where)
            for pod in (k8s.pod_settings, k8s.orchestrator_pod_settings):
                if pod is not None:
                    check_pod_settings(pod.model_dump(exclude_unset=True), where)


def pipeline_steps() -> list[str]:
    """The step invocations of pipelines/finetune.py, read from its source (no torch import here)."""
    tree = ast.parse((PROJECT_ROOT / "pipelines" / "finetune.py").read_text())
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module.startswith("steps.")
                for a in n.names}
    return [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id in imported]


def test_every_pipeline_step_has_an_image_and_resources():
    raw = overlay()
    steps = pipeline_steps()
    assert len(steps) == 17 and set(steps) == set(raw["steps"]), f"steps of the pipeline: {steps}"
    pipeline_image = raw["settings"]["docker"]["dockerfile"]
    assert pipeline_image == "docker/Dockerfile.cpu"
    for step in steps:
        settings = raw["steps"][step]["settings"]
        image = settings.get("docker", {}).get("dockerfile", pipeline_image)
        assert image == ("docker/Dockerfile.gpu" if step in GPU_IMAGE_STEPS else "docker/Dockerfile.cpu"), step
        pod = settings["orchestrator.kubernetes"]["pod_settings"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(pod["resources"][part]), f"{step}: {part}"
        gpus = pod["resources"]["limits"].get("nvidia.com/gpu")
        if step in GPU_STEPS:
            assert gpus == "1" and pod["node_selectors"] and pod["tolerations"], step
        else:
            assert gpus is None and not pod.get("node_selectors"), f"{step} must not hold a GPU"
        assert pod["additional_pod_spec_args"]["security_context"]["runAsNonRoot"] is True


def test_overlay_references_what_k8s_creates(all_objects):
    raw = overlay()["settings"]["orchestrator.kubernetes"]
    for overlay_name, objects in all_objects.items():
        names = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
        for sa in (raw["service_account_name"], raw["step_pod_service_account_name"]):
            assert ("ServiceAccount", PIPELINES_NAMESPACE, sa) in names, f"{overlay_name}: {sa}"
        for step in overlay()["steps"].values():
            for vol in step["settings"]["orchestrator.kubernetes"]["pod_settings"].get("volumes", []):
                if "emptyDir" in vol:  # the writable paths of a read-only root filesystem
                    continue
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", PIPELINES_NAMESPACE, claim) in names
    script = (PROJECT_ROOT / "scripts" / "register_stack.sh").read_text()
    assert f"K8S_NAMESPACE=${{K8S_NAMESPACE:-{PIPELINES_NAMESPACE}}}" in script
    assert "--service_account_name=zenml-orchestrator" in script and "--pass_zenml_token_as_secret=True" in script


def test_local_default_has_no_remote_settings():
    """configs/default.yaml stays free of them: a local run neither sees nor warns about them."""
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "default.yaml").read_text())
    assert "settings" not in raw and "steps" not in raw


@pytest.mark.parametrize("overlays", [["configs/env/kubernetes.yaml"],
                                      ["configs/env/kubernetes.yaml", "configs/schedule.yaml"]])
def test_combined_config_loads_and_keeps_the_parameters(tmp_path, overlays):
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    paths = [PROJECT_ROOT / "configs" / "default.yaml"] + [PROJECT_ROOT / p for p in overlays]
    out = write_run(paths, tmp_path / "run.yaml")
    assert load(out) == load(PROJECT_ROOT / "configs" / "default.yaml")
    merged = yaml.safe_load(out.read_text())
    assert merged["model"]["name"] == "tuneline-banking77"
    config = PipelineRunConfiguration.model_validate(merged)
    assert set(config.steps) == set(pipeline_steps())
    cli = subprocess.run([str(TUNELINE), "config", "merge", *map(str, paths), "-o", str(tmp_path / "cli.yaml")],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert yaml.safe_load((tmp_path / "cli.yaml").read_text()) == yaml.safe_load(out.read_text())


def test_a_broken_overlay_fails_the_render_with_kubectls_message(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(AssertionError, match="missing.yaml"):
        render(tmp_path)


def test_register_stack_script_parses_and_holds_no_secret():
    script = PROJECT_ROOT / "scripts" / "register_stack.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert not SECRETISH_VALUE.search(text)
    for flag in ("--password", "--aws_secret_access_key", "--secret=", "--key=", "--token="):
        assert flag not in text, f"{flag}: credentials go through --values=@FILE, never a command line"


def test_register_stack_script_keeps_secrets_off_command_lines(tmp_path):
    """Run the script against stub `zenml`/`kubectl`: the argv of every call is recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub = f"""#!/usr/bin/env bash
echo "$(basename "$0") $*" >> {log}
for a in "$@"; do case "$a" in --values=@*) cat "${{a#--values=@}}" >> {log}.values;; esac; done
case "$2" in describe|get) exit 1;; esac
exit 0
"""
    for tool in ("zenml", "kubectl"):
        (bin_dir / tool).write_text(stub)
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "K8S_CONTEXT": "ctx", "ARTIFACT_STORE_URI": "s3://bucket/tuneline",
           "REGISTRY_URI": "registry.example.com/ml", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEVALUE",
           "AWS_SECRET_ACCESS_KEY": "very-secret-value-123", "REGISTRY_USERNAME": "robot",
           "REGISTRY_PASSWORD": "registry-pass-456", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "register_stack.sh")], env=env, check=True,
                   capture_output=True, timeout=60)
    calls = log.read_text()
    for secret in ("very-secret-value-123", "registry-pass-456", "AKIDEXAMPLEVALUE"):
        assert secret not in calls, "a credential reached a command line"
    assert "very-secret-value-123" in (tmp_path / "calls.log.values").read_text()  # went through the file
    for expected in ("zenml orchestrator register tuneline-k8s-orchestrator --flavor=kubernetes",
                     "--kubernetes_namespace=tuneline", "--pass_zenml_token_as_secret=True",
                     "zenml artifact-store register tuneline-k8s-artifacts --flavor=s3",
                     "--authentication_secret=tuneline-k8s-artifacts",
                     "zenml container-registry register tuneline-k8s-registry",
                     "zenml image-builder register tuneline-k8s-builder --flavor=kaniko",
                     "zenml stack register tuneline-k8s", "zenml stack set tuneline-k8s"):
        assert expected in calls, expected
    assert not list((tmp_path / "tmp").iterdir()), "the credential files must be removed"


# --- hub models: k8s/components/hub and configs/env/kubernetes-hub.yaml ----------------------------


def test_hub_cache_volume_only_where_the_hub_component_is(all_objects):
    for overlay_name, objects in all_objects.items():
        claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "hf-cache"]
        if overlay_name != "hub":
            assert not claims, f"{overlay_name}: the hub cache is opt-in (k8s/components/hub)"
            continue
        [claim] = claims
        assert claim["metadata"]["namespace"] == PIPELINES_NAMESPACE
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # CPU and GPU step pods mount it at once
    assert ("kind: Component" in (K8S / "components" / "hub" / "kustomization.yaml").read_text())


def test_hub_run_config_loads_with_zenml_classes():
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    raw = yaml.safe_load(HUB_YAML.read_text())
    PipelineRunConfiguration.model_validate(raw)
    assert set(raw["steps"]) <= set(pipeline_steps())
    for where, settings in [("pipeline", raw["settings"])] + [(n, s["settings"]) for n, s in raw["steps"].items()]:
        assert set(settings) == {"orchestrator.kubernetes"}, where
        k8s = strict(KubernetesOrchestratorSettings, settings["orchestrator.kubernetes"], where)
        check_pod_settings(k8s.pod_settings.model_dump(exclude_unset=True), where)


@pytest.fixture(scope="module")
def hub_jobs(tmp_path_factory) -> dict[str, dict]:
    """{step: Job} of every step Job ZenML 0.98 would create for default + kubernetes + kubernetes-hub."""
    import test_schedule  # compiles the real pipeline on an in-memory Kubernetes stack, offline
    from zenml.client import Client
    from zenml.models import BuildItem, PipelineBuildBase

    repo = tmp_path_factory.mktemp("zenml-repo-hub")
    (repo / ".zen").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZENML_REPOSITORY_PATH", str(repo))
        mp.setattr(test_schedule, "CONFIGS", [PROJECT_ROOT / "configs" / "default.yaml", KUBERNETES_YAML, HUB_YAML])
        Client._reset_instance()
        try:
            compiled = test_schedule.compile_pipeline(tmp_path_factory.mktemp("run-hub"))
            images = {(f"{i.step_name}.{i.key}" if i.step_name else i.key):
                      BuildItem(image=test_schedule.IMAGES[i.settings.dockerfile], contains_code=False)
                      for i in compiled.orchestrator.get_docker_builds(compiled.snapshot)}
            snapshot = SimpleNamespace(
                id=uuid.uuid4(), project_id=uuid.uuid4(), schedule=None,
                build=PipelineBuildBase(images=images, is_local=False, contains_code=False),
                pipeline_configuration=compiled.snapshot.pipeline_configuration,
                step_configurations=compiled.snapshot.step_configurations)
            return {step: test_schedule.validate(test_schedule.step_job(compiled, snapshot, step))
                    for step in snapshot.step_configurations}
        finally:
            Client._reset_instance()


@pytest.fixture(scope="module")
def hub_pods(hub_jobs) -> dict[str, dict]:
    """{step: pod spec} of hub_jobs."""
    return {step: job["spec"]["template"]["spec"] for step, job in hub_jobs.items()}


def test_hub_step_pods_go_online_with_the_cache_and_an_optional_token(hub_pods, all_objects):
    claims = {o["metadata"]["name"] for o in all_objects["hub"] if o["kind"] == "PersistentVolumeClaim"
              and o["metadata"]["namespace"] == PIPELINES_NAMESPACE}
    documented = documented_secret_keys()
    # The compiled default: train_reward runs only with reward_model.enabled (off there).
    assert set(hub_pods) == set(pipeline_steps()) - {"train_reward"}
    for step, pod in hub_pods.items():
        [main] = pod["containers"]
        env = {e["name"]: e for e in main["env"]}
        assert env["HF_HUB_OFFLINE"]["value"] == "0" and env["TRANSFORMERS_OFFLINE"]["value"] == "0", step
        token = env["HF_TOKEN"]
        assert "value" not in token, f"{step}: HF_TOKEN must come from a Secret"
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True and ref["key"] in documented.get(ref["name"], set()), step
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volume = mounts[env["HF_HOME"]["value"]]  # HF_HOME is the mounted hub cache
        [vol] = [v for v in pod["volumes"] if v["name"] == volume]
        assert vol["persistentVolumeClaim"]["claimName"] in claims, f"{step}: k8s/overlays/hub lacks the claim"
        if step in {"train_sft", "train_reward", "train_dpo"}:  # the training cache is still there beside the hub cache
            assert mounts["/home/tuneline/.cache/tuneline"] == "tuneline-cache", step
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):  # what the switch turns off
        assert "HF_HUB_OFFLINE=1" in (PROJECT_ROOT / "docker" / dockerfile).read_text()
    assert "HF_HUB_OFFLINE" not in KUBERNETES_YAML.read_text()  # offline unless the hub overlay is merged


def test_rendered_step_pods_are_read_only_labelled_and_bounded(hub_jobs, hub_pods):
    """What ZenML builds from the pod settings (default + kubernetes + kubernetes-hub): every step pod has a
    read-only root filesystem with emptyDirs at the paths the images write, ephemeral-storage requests and
    limits, and the label the NetworkPolicies select (tests/infra/test_k8s_hardening.py checks the policies)."""
    for step, pod in hub_pods.items():
        [main] = pod["containers"]
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, step
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        for path in ("/tmp", "/home/tuneline", "/app"):
            assert "emptyDir" in volumes[mounts[path]], f"{step}: {path} must be a writable emptyDir"
        for part in ("requests", "limits"):
            assert "ephemeral-storage" in main["resources"][part], f"{step}: ephemeral-storage {part}"
        labels = hub_jobs[step]["spec"]["template"]["metadata"]["labels"]
        assert labels["tuneline.io/component"] == "step", step
