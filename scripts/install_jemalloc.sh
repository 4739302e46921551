#!/usr/bin/env bash
# Install jemalloc, the allocator training runs under (tuneline/allocator.py: with glibc's malloc, CPU
# training slows down step by step; measured in docs/training.md, "CPU throughput").
#
#   scripts/install_jemalloc.sh        # make setup runs it
#
# A system library, so a system package: Debian/Ubuntu's libjemalloc2 through apt-get where this runs as root.
# Elsewhere it says what to run and exits 0: the pipeline works without jemalloc, only slower.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { echo "install_jemalloc: $*" >&2; }

# The same lookup as the pipeline's (tuneline/allocator.py needs only the standard library).
found() {
    [ -n "$(python3 -c 'from tuneline.allocator import jemalloc_path; print(jemalloc_path() or "")' 2>/dev/null)" ]
}

if [ "${TUNELINE_JEMALLOC:-1}" = 0 ] || found; then  # opted out, or there already
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing libjemalloc2 (apt-get)"
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q libjemalloc2 >/dev/null 2>&1; }
    # Again after `apt-get update` where the package lists are missing or old (a fresh container).
    if install || { apt-get update -q >/dev/null 2>&1 && install; }; then
        found && exit 0
    fi
fi
say "jemalloc is not installed; training runs with glibc's malloc, ~1.5x slower on a CPU."
say "install it with: sudo apt-get install libjemalloc2 (Debian, Ubuntu) or sudo dnf install jemalloc (Fedora)"
exit 0
