#!/usr/bin/env bash
# Parquet check: a reader other than ours (pyarrow, and pandas) opens what `batch` writes. It
# writes a typed Parquet input with pyarrow, runs `batch run` on it against the embedded mock,
# and checks the results' column types and values; given VECTORS, it checks a vector file too.
# See check.py for what it covers.
#
# Usage: tests/parquet_check/run.sh
#   BATCH_BIN=path/to/batch      use this binary (default: build target/debug/batch with cargo)
#   VECTORS=file.parquet         also check this vector file (VectorParquetWriter's), against
#   VECTORS_EXPECTED=file.json   {"dims": n, "rows": [{"line", "id", "status", "error",
#                                "tokens", "embedding"}, ...]} (the ignored test in
#                                tests/cli/parquet.rs writes both)
#   PARQUET_VENV=dir             virtualenv to create or reuse (default: target/parquet-check-venv)
#
# Exit status: 0 when every check passed ("PASSED"), or when it cannot run here ("SKIPPED: ...":
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
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null \
    || skip "python3 is missing or older than 3.9, which pyarrow needs"
"$python" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || skip "python3 has no venv/ensurepip module (on Debian: apt-get install python3-venv)"

venv="${PARQUET_VENV:-$root/target/parquet-check-venv}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >/dev/null 2>&1 || {
        rm -rf "$venv"
        skip "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    }
fi
if ! "$venv/bin/python" -c 'import pyarrow, pandas' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pyarrow pandas \
        >"$venv/pip.log" 2>&1 || skip "cannot install pyarrow and pandas from PyPI (see $venv/pip.log)"
fi

bin="${BATCH_BIN:-}"
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --quiet --bin batch)
    bin="$root/target/debug/batch"
fi
[ -x "$bin" ] || { echo "FAILED: no batch binary at $bin (build it with cargo build)"; exit 1; }

exec "$venv/bin/python" "$here/check.py" --bin "$bin"
