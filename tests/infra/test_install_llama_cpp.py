"""scripts/install_llama_cpp.sh, offline: the sdist the converter comes from is pinned by sha256 and cached
in a private dir; a planted or swapped file is refused, wherever it comes from.

The script's functions run from bash (sourcing it only defines them); a stand-in `python` plays pip and
`import llama_cpp`, and a small tarball shaped like the sdist plays the sdist (its hash replaces the pin
inside the test's shell only). Nothing is downloaded or built.
"""

import hashlib
import io
import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tuneline.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "install_llama_cpp.sh"
TEXT = SCRIPT.read_text()
VERSION = re.search(r"^VERSION=(\S+)$", TEXT, re.MULTILINE).group(1)
NAME = f"llama_cpp_python-{VERSION}.tar.gz"
# Plays the venv's python: `-m pip download ... -d DIR` drops $FAKE_SDIST there; `-c ...` (import llama_cpp) works.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -m ]; then
    while [ $# -gt 0 ]; do [ "$1" = -d ] && { cp "$FAKE_SDIST" "$2/"; exit 0; }; shift; done
    exit 1
fi
[ "$1" = -c ] && case "$2" in *print*) echo 0.0.test ;; esac
exit 0
"""


def fake_sdist(path: Path, marker: str = "genuine") -> str:
    """A tarball with the sdist's layout (the converter's parts under vendor/llama.cpp); returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        root = f"llama_cpp_python-{VERSION}/vendor/llama.cpp"
        for name in (
            "convert_hf_to_gguf.py",
            "convert_lora_to_gguf.py",
            "conversion/__init__.py",
            "gguf-py/gguf/__init__.py",
            "models/templates/t.jinja",
            "LICENSE",
        ):
            data = f"# {marker}: {name}\n".encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bash(tmp_path: Path, commands: str, pin: str | None = None, **env) -> subprocess.CompletedProcess:
    """Source the script and run `commands` in that shell (`pin`: the pinned sha256 there)."""
    override = f"SDIST_SHA256={pin}\n" if pin else ""
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), **env}
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"\n{override}{commands}'],
        env=environ,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def python(tmp_path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    return venv / "bin" / "python"


def test_pins_a_sha256_and_caches_outside_tmp(tmp_path):
    assert re.search(r"^SDIST_SHA256=[0-9a-f]{64}$", TEXT, re.MULTILINE), (
        "the sdist's sha256 must be pinned in the script"
    )
    code = "\n".join(line for line in TEXT.splitlines() if not line.lstrip().startswith("#"))
    assert "/tmp" not in code and "TMPDIR" not in code
    home = bash(tmp_path, "sdist_dir").stdout.strip()
    assert home == f"{tmp_path}/home/.cache/tuneline/llama-cpp-{VERSION}"
    assert (
        bash(tmp_path, "sdist_dir", XDG_CACHE_HOME=str(tmp_path / "xdg")).stdout.strip().startswith(f"{tmp_path}/xdg/")
    )


def test_refuses_a_planted_cached_sdist(tmp_path, python):
    cache = tmp_path / "xdg" / "tuneline" / f"llama-cpp-{VERSION}"
    fake_sdist(cache / NAME, "planted")
    cache.chmod(0o777)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "PYTHON": str(python),
        "FAKE_SDIST": "/nonexistent",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--fetch-sdist"], env=env, check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and f"refusing {cache / NAME}" in proc.stderr and "not the pinned" in proc.stderr
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_a_cached_sdist_with_the_pinned_hash_is_used(tmp_path):
    cache = tmp_path / "xdg" / "tuneline" / f"llama-cpp-{VERSION}"
    pin = fake_sdist(cache / NAME)
    proc = bash(tmp_path, "fetch_sdist /bin/false", pin=pin, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cache / NAME)
    other = fake_sdist(tmp_path / "given" / NAME, "swapped")
    proc = bash(tmp_path, "fetch_sdist /bin/false", pin=pin, LLAMA_CPP_SDIST=str(tmp_path / "given" / NAME))
    assert proc.returncode != 0 and other in proc.stderr, "LLAMA_CPP_SDIST is checked too"


def test_a_download_with_another_hash_is_not_cached(tmp_path, python):
    fake_sdist(tmp_path / "served" / NAME, "tampered in transit")
    proc = bash(
        tmp_path,
        f'fetch_sdist "{python}"',
        FAKE_SDIST=str(tmp_path / "served" / NAME),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
    )
    assert proc.returncode != 0 and "refusing" in proc.stderr
    assert list((tmp_path / "xdg" / "tuneline" / f"llama-cpp-{VERSION}").iterdir()) == []


def test_refuses_a_cache_dir_that_is_a_symlink(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "xdg" / "tuneline").mkdir(parents=True)
    (tmp_path / "xdg" / "tuneline" / f"llama-cpp-{VERSION}").symlink_to(tmp_path / "elsewhere")
    proc = bash(tmp_path, "fetch_sdist /bin/false", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert proc.returncode != 0 and "symlink" in proc.stderr


def test_install_downloads_verifies_and_replaces_an_unverified_converter(tmp_path, python):
    """A converter already there but not from the pinned sdist (no hash file beside it) is replaced."""
    pin = fake_sdist(tmp_path / "served" / NAME)
    dest = python.parent.parent / "share" / "tuneline" / "llama.cpp"
    dest.mkdir(parents=True)
    (dest / "convert_hf_to_gguf.py").write_text("# from an unverified sdist\n")
    env = {"FAKE_SDIST": str(tmp_path / "served" / NAME), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    proc = bash(tmp_path, f'main "{python.parent.parent}"', pin=pin, **env)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "convert_hf_to_gguf.py").read_text() == "# genuine: convert_hf_to_gguf.py\n"
    assert (dest / "SDIST_SHA256").read_text().strip() == pin
    assert (tmp_path / "xdg" / "tuneline" / f"llama-cpp-{VERSION}" / NAME).is_file()
    again = bash(tmp_path, f'main "{python.parent.parent}"', pin=pin, **env)
    assert again.returncode == 0 and "nothing to do" in again.stderr


# Plays a venv whose llama_cpp was built with llama.cpp's AMX backend until a `pip install` rebuilds it: `-c` code
# that asks about AMX fails before that; each `-m pip install ...` logs its CMAKE_ARGS and arguments to $PIP_LOG.
AMX_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -m ]; then
    prev=
    for a in "$@"; do [ "$prev" = -d ] && { cp "$FAKE_SDIST" "$a/"; exit 0; }; prev=$a; done
    echo "$CMAKE_ARGS | $*" >> "$PIP_LOG"
    exit 0
fi
[ "$1" = -c ] && case "$2" in *AMX*) [ -f "$PIP_LOG" ] || exit 1 ;; *print*) echo 0.0.test ;; esac
exit 0
"""


def test_cmake_args_build_without_amx_wherever_the_lock_is_built():
    """The one set of flags (script --cmake-args) reaches each pip install that builds llama-cpp-python's sdist."""
    args = subprocess.run(["bash", str(SCRIPT), "--cmake-args"], capture_output=True, text=True, check=True).stdout
    assert args.split() == ["-DCMAKE_C_FLAGS=-U__AMX_INT8__", "-DCMAKE_CXX_FLAGS=-U__AMX_INT8__"]
    takes = 'CMAKE_ARGS="$$(bash scripts/install_llama_cpp.sh --cmake-args)"'
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(re.escape(takes) + r" \\\n\s+\$\(BIN\)/pip install .*-r docker/requirements-ci.lock", makefile)
    dockerfile = (PROJECT_ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(re.escape(takes.replace("$$", "$")) + r".*\\\n\s+pip install .*-r docker/requirements-gpu.lock",
                     dockerfile)


def test_an_amx_build_is_rebuilt_from_the_verified_sdist(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(AMX_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    pin = fake_sdist(tmp_path / "served" / NAME)
    env = {"FAKE_SDIST": str(tmp_path / "served" / NAME), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "PIP_LOG": str(tmp_path / "pip.log")}
    # The converter is already in place: only the AMX build stands between this venv and "nothing to do".
    bash(tmp_path, f'extract_converter "{tmp_path / "served" / NAME}" "{venv / "share" / "tuneline" / "llama.cpp"}"',
         pin=pin)
    proc = bash(tmp_path, f'main "{venv}"', pin=pin, **env)
    assert proc.returncode == 0, proc.stderr
    sdist = tmp_path / "xdg" / "tuneline" / f"llama-cpp-{VERSION}" / NAME
    assert (tmp_path / "pip.log").read_text().splitlines() == [
        f"-DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__ | -m pip install --no-cache-dir "
        f"--force-reinstall --no-deps {sdist}"]
    again = bash(tmp_path, f'main "{venv}"', pin=pin, **env)
    assert again.returncode == 0 and "nothing to do" in again.stderr
