#!/usr/bin/env bash
# Install llama-cpp-python (built from its sdist) into a venv, and copy llama.cpp's own
# HF -> GGUF converter out of that same sdist, so the converter, its vendored gguf-py and
# the quantizer all come from one llama.cpp version.
#
#   scripts/install_llama_cpp.sh .venv
#
# Idempotent: does nothing when `import llama_cpp` works in the venv and the converter is
# already at $VENV_DIR/share/tuneline/llama.cpp/convert_hf_to_gguf.py.
# LLAMA_CPP_SDIST=/path/to/llama_cpp_python-0.3.36.tar.gz skips the download.
set -euo pipefail

VERSION=0.3.36
VENV_DIR=${1:?usage: $0 VENV_DIR}
VENV_DIR=$(cd "$VENV_DIR" && pwd)
PY="$VENV_DIR/bin/python"
DEST="$VENV_DIR/share/tuneline/llama.cpp"
SDIST_DIR="${TMPDIR:-/tmp}/tuneline-llama-cpp-$VERSION"
SDIST="${LLAMA_CPP_SDIST:-$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz}"
# What convert_hf_to_gguf.py needs beside itself: the `conversion` package it imports, the
# gguf-py it puts first on sys.path, and models/templates, which some model classes read.
PARTS=(convert_hf_to_gguf.py conversion gguf-py models/templates LICENSE)

[ -x "$PY" ] || { echo "install_llama_cpp: $PY not found: create the venv first" >&2; exit 1; }

have_module() { "$PY" -c 'import llama_cpp' >/dev/null 2>&1; }
have_converter() { [ -f "$DEST/convert_hf_to_gguf.py" ]; }

if have_module && have_converter; then
    echo "install_llama_cpp: llama_cpp $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)') and converter in $DEST already present: nothing to do"
    exit 0
fi

if [ ! -f "$SDIST" ]; then
    echo "install_llama_cpp: downloading the llama-cpp-python==$VERSION sdist into $SDIST_DIR"
    mkdir -p "$SDIST_DIR"
    "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
else
    echo "install_llama_cpp: using sdist $SDIST"
fi

if ! have_module; then
    # A source build (no wheel for CPU-only Linux on PyPI); several minutes on few cores.
    echo "install_llama_cpp: building and installing llama-cpp-python $VERSION from source (several minutes)"
    # From the index (not the local sdist), so pip caches the built wheel for the next venv.
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install "llama-cpp-python==$VERSION"
fi

if ! have_converter; then
    echo "install_llama_cpp: extracting the converter (${PARTS[*]}) into $DEST"
    prefix="llama_cpp_python-$VERSION/vendor/llama.cpp"
    members=()
    for part in "${PARTS[@]}"; do members+=("$prefix/$part"); done
    # Extract beside the destination and rename, so an interrupted run leaves no half copy.
    mkdir -p "$(dirname "$DEST")"
    tmp=$(mktemp -d "$(dirname "$DEST")/.llama.cpp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    tar -xzf "$SDIST" -C "$tmp" --strip-components=3 "${members[@]}"
    rm -rf "$DEST"
    chmod 755 "$tmp"
    mv "$tmp" "$DEST"
    trap - EXIT
fi

"$PY" -c 'import llama_cpp' || { echo "install_llama_cpp: import llama_cpp still fails" >&2; exit 1; }
echo "install_llama_cpp: done: llama_cpp $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)'), converter $DEST/convert_hf_to_gguf.py"
