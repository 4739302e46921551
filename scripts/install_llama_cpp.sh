#!/usr/bin/env bash
# Install llama-cpp-python (built from its sdist) into a venv, and copy llama.cpp's own
# HF -> GGUF converter out of that same sdist, so the converter, its vendored gguf-py and
# the quantizer all come from one llama.cpp version.
#
#   scripts/install_llama_cpp.sh .venv
#   scripts/install_llama_cpp.sh --fetch-sdist     # only fetch and verify the sdist; prints its path
#   CMAKE_ARGS="$(scripts/install_llama_cpp.sh --cmake-args)" pip install ...   # build flags: no AMX (below)
#
# Idempotent: does nothing when `import llama_cpp` works in the venv and the converter there
# ($VENV_DIR/share/tuneline/llama.cpp) was extracted from the pinned sdist.
# LLAMA_CPP_SDIST=/path/to/llama_cpp_python-0.3.36.tar.gz skips the download.
#
# The converter taken from the sdist runs at every export, so the sdist must be the one pinned here:
# wherever it comes from (the download, the cache, LLAMA_CPP_SDIST) its sha256 is checked against
# SDIST_SHA256 and a file with another hash is refused. It is cached in a dir only this user can
# enter (0700, ${XDG_CACHE_HOME:-~/.cache}/tuneline/llama-cpp-VERSION), not at a predictable path
# in a world-writable /tmp, where anyone could plant a file first.
set -euo pipefail

VERSION=0.3.36
# sha256 of llama_cpp_python-0.3.36.tar.gz as the package index serves it (`pip download --no-deps
# --no-binary :all: llama-cpp-python==0.3.36`, then `sha256sum`). Change it only together with VERSION.
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST_NAME="llama_cpp_python-$VERSION.tar.gz"
# llama.cpp is built for this CPU (-march=native), but without its AMX matmul backend: on CPUs with AMX
# (Intel Sapphire Rapids and later, common in clouds) every quantized file of SmolLM2-135M (Q4_0 .. Q8_0, K-quants)
# segfaults in its first llama_decode there (ggml-org/llama.cpp#20824, open), killing the whole pipeline run.
# -U drops the compiler's __AMX_INT8__, which alone compiles that backend in; AVX512/VNNI kernels stay.
# `--cmake-args` prints them for the other builds of the lock's llama-cpp-python (Makefile, docker/Dockerfile.gpu).
CMAKE_ARGS_NO_AMX="-DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__"
# What convert_hf_to_gguf.py (and convert_lora_to_gguf.py, for export.lora_adapters) needs beside itself: the `conversion` package it imports, the
# gguf-py it puts first on sys.path, and models/templates, which some model classes read.
PARTS=(convert_hf_to_gguf.py convert_lora_to_gguf.py conversion gguf-py models/templates LICENSE)

say() { echo "install_llama_cpp: $*" >&2; }

sdist_dir() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/tuneline/llama-cpp-$VERSION"; }

# Create DIR (0700) or accept it only when it is a real dir of this user; it is made 0700 either way.
private_dir() {
    local dir=$1
    (umask 077 && mkdir -p "$dir")
    if [ -L "$dir" ] || [ ! -d "$dir" ] || [ ! -O "$dir" ]; then
        say "$dir is a symlink or not a dir owned by $(id -un): remove it and re-run"
        return 1
    fi
    chmod 700 "$dir"
}

sha256_of() {
    if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1
}

# Succeeds only when FILE is the pinned sdist; otherwise says which file, both hashes and the fix.
verify_sdist() {
    local file=$1 got
    [ -f "$file" ] || { say "$file: not found"; return 1; }
    got=$(sha256_of "$file")
    if [ "$got" != "$SDIST_SHA256" ]; then
        say "refusing $file: its sha256 is $got, not the pinned $SDIST_SHA256 of llama-cpp-python $VERSION" \
            "(delete it and re-run to download it again)"
        return 1
    fi
}

# Prints the path of the verified sdist: LLAMA_CPP_SDIST, else the cached copy, else a download into the cache.
fetch_sdist() {
    local py=$1 dir tmp
    if [ -n "${LLAMA_CPP_SDIST:-}" ]; then
        verify_sdist "$LLAMA_CPP_SDIST" || return 1
        echo "$LLAMA_CPP_SDIST"
        return
    fi
    dir=$(sdist_dir)
    private_dir "$dir" || return 1
    if [ ! -e "$dir/$SDIST_NAME" ]; then
        say "downloading the llama-cpp-python==$VERSION sdist into $dir"
        tmp=$(mktemp -d "$dir/.download.XXXXXX")
        # Into a temp dir, verified, then renamed: the cache never holds a partial or unchecked file.
        if ! "$py" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2 \
            || ! verify_sdist "$tmp/$SDIST_NAME"; then
            rm -rf "$tmp"
            return 1
        fi
        mv "$tmp/$SDIST_NAME" "$dir/$SDIST_NAME"
        rm -rf "$tmp"
    fi
    verify_sdist "$dir/$SDIST_NAME" || return 1
    echo "$dir/$SDIST_NAME"
}

# Copies PARTS out of the verified SDIST into DEST, with the sdist's hash beside them (what have_converter checks).
extract_converter() {
    local sdist=$1 dest=$2 tmp old prefix="llama_cpp_python-$VERSION/vendor/llama.cpp" members=()
    for part in "${PARTS[@]}"; do members+=("$prefix/$part"); done
    say "extracting the converter (${PARTS[*]}) into $dest"
    # Extract beside the destination and rename, so an interrupted run leaves no half copy.
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp -d "$(dirname "$dest")/.llama.cpp.XXXXXX")
    tar -xzf "$sdist" -C "$tmp" --strip-components=3 "${members[@]}" || { rm -rf "$tmp"; return 1; }
    echo "$SDIST_SHA256" > "$tmp/SDIST_SHA256"
    chmod 755 "$tmp"
    old="$tmp.old"
    [ ! -e "$dest" ] || mv "$dest" "$old"
    mv "$tmp" "$dest"
    rm -rf "$old"
}

main() {
    if [ "${1:-}" = "--cmake-args" ]; then
        echo "$CMAKE_ARGS_NO_AMX"
        return
    fi
    if [ "${1:-}" = "--fetch-sdist" ]; then
        fetch_sdist "${PYTHON:-python3}"
        return
    fi
    local venv_dir py dest sdist
    venv_dir=${1:?usage: $0 VENV_DIR | --fetch-sdist}
    venv_dir=$(cd "$venv_dir" && pwd)
    py="$venv_dir/bin/python"
    dest="$venv_dir/share/tuneline/llama.cpp"
    [ -x "$py" ] || { say "$py not found: create the venv first"; return 1; }

    have_module() { "$py" -c 'import llama_cpp' >/dev/null 2>&1; }
    # A build with the AMX backend (an earlier install, or a cached wheel) is rebuilt: see CMAKE_ARGS_NO_AMX.
    amx_free() { "$py" -c 'import sys, llama_cpp; sys.exit(b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info())' >/dev/null 2>&1; }
    # A converter from an unverified sdist (no hash file, or another one) is replaced.
    have_converter() { [ -f "$dest/convert_hf_to_gguf.py" ] && [ -f "$dest/convert_lora_to_gguf.py" ] && [ "$(cat "$dest/SDIST_SHA256" 2>/dev/null)" = "$SDIST_SHA256" ]; }

    if have_module && amx_free && have_converter; then
        say "llama_cpp $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)') and converter in $dest already present: nothing to do"
        return
    fi

    sdist=$(fetch_sdist "$py")
    say "using sdist $sdist (sha256 verified)"

    if ! have_module || ! amx_free; then
        # A source build (no wheel for CPU-only Linux on PyPI); several minutes on few cores. From the verified
        # sdist, and not from pip's wheel cache, which may hold a wheel built with other flags.
        say "building and installing llama-cpp-python $VERSION from source (several minutes)"
        CMAKE_ARGS="$CMAKE_ARGS_NO_AMX" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            "$py" -m pip install --no-cache-dir --force-reinstall --no-deps "$sdist"
    fi

    if ! have_converter; then
        extract_converter "$sdist" "$dest"
    fi

    "$py" -c 'import llama_cpp' || { say "import llama_cpp still fails"; return 1; }
    amx_free || { say "llama_cpp still has llama.cpp's AMX backend: CMAKE_ARGS_NO_AMX did not take"; return 1; }
    say "done: llama_cpp $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)'), converter $dest/convert_hf_to_gguf.py"
}

# Sourced (the tests call the functions above), it only defines them.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
