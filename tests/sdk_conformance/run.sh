#!/usr/bin/env bash
# SDK conformance check of `batch mock`: drives the mock with the official Python SDKs (latest
# `openai` and `anthropic` from PyPI, in a virtualenv of its own) the way their docs show, and
# fails if any call does not behave as against the real APIs. See check.py for what it covers.
#
# Usage: tests/sdk_conformance/run.sh
#   BATCH_BIN=path/to/batch   use this binary (default: build target/debug/batch with cargo)
#   SDK_VENV=dir              virtualenv to create or reuse (default: target/sdk-conformance-venv)
#
# Exit status: 0 when every check passed, or when it cannot run here (prints "SKIPPED: ...":
# no python3, no venv module, PyPI unreachable); non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

skip() {
    echo "SKIPPED: $*"
    exit 0
}

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || skip "python3 is not installed"
"$python" -c 'import sys' >/dev/null 2>&1 || skip "$python does not run"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null \
    || skip "python3 is older than 3.9, which the SDKs need"
"$python" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || skip "python3 has no venv/ensurepip module (on Debian: apt-get install python3-venv)"

venv="${SDK_VENV:-$root/target/sdk-conformance-venv}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >/dev/null 2>&1 || {
        rm -rf "$venv"
        skip "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    }
fi
# The latest SDKs each time: the point is to catch what a new release changed.
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    openai anthropic >"$venv/pip.log" 2>&1; then
    if "$venv/bin/python" -c 'import openai, anthropic' >/dev/null 2>&1; then
        echo "note: could not upgrade the SDKs from PyPI (see $venv/pip.log); using the installed ones"
    else
        skip "cannot install openai and anthropic from PyPI (see $venv/pip.log)"
    fi
fi

bin="${BATCH_BIN:-}"
if [ -z "$bin" ]; then
    if command -v cargo >/dev/null 2>&1; then
        (cd "$root" && cargo build --quiet --bin batch)
        bin="$root/target/debug/batch"
    elif [ -x "$root/target/release/batch" ]; then
        bin="$root/target/release/batch"
    else
        bin="$root/target/debug/batch"
    fi
fi
[ -x "$bin" ] || { echo "FAILED: no batch binary at $bin (build it with cargo build)"; exit 1; }

exec "$venv/bin/python" "$here/check.py" --bin "$bin"
