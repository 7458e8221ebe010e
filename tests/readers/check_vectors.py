#!/usr/bin/env python3
"""Opens `batch embed` outputs with a reader other than ours: NumPy loads the .npy, the csv and
json modules read the id list and the JSON Lines, and every vector must agree across the three.

Usage: tests/readers/check_vectors.py [BATCH]   (default target/debug/batch)

Starts `batch embed --mock` itself on a small generated input with one row the mock refuses.
Exits 0 with "skipped" when NumPy is not installed (pip install numpy), 1 on any mismatch.
"""
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("check_vectors: skipped (NumPy is not installed)")
    sys.exit(0)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BATCH = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/batch")
ROWS, BAD, DIMS = 40, 7, 16


def embed(out: str) -> None:
    cmd = [BATCH, "embed", "in.csv", "--column", "text", "--mock", "--dimensions", str(DIMS),
           "--max-inputs-per-request", "6", "--no-cache", "-q", "-o", out]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 1:  # one row fails on purpose
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        with open("in.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            for i in range(ROWS):
                text = f"row {i} BAD_EMBEDDING" if i == BAD else f"row {i}, “unicode” ✓ text {i * 3}"
                w.writerow([f"id-{i}", text])
        embed("out.npy")
        embed("out.jsonl")
        m = np.load("out.npy")
        assert m.dtype == np.float32 and m.shape == (ROWS, DIMS), (m.dtype, m.shape)
        with open("out.ids.csv", newline="") as f:
            ids = list(csv.DictReader(f))
        with open("out.jsonl") as f:
            lines = [json.loads(l) for l in f]
        assert [r["id"] for r in ids] == [l["id"] for l in lines] == [f"id-{i}" for i in range(ROWS)]
        for i, (r, l) in enumerate(zip(ids, lines)):
            if i == BAD:
                assert r["status"] == l["status"] == "failed" and l["embedding"] is None, (r, l)
                assert np.isnan(m[i]).all()
                continue
            assert r["status"] == l["status"] == "ok", (r, l)
            assert np.array_equal(m[i], np.array(l["embedding"], dtype=np.float32)), i
            assert math.isclose(float(np.linalg.norm(m[i])), 1.0, rel_tol=1e-4), i
        print(f"check_vectors: ok ({ROWS} rows of {DIMS} float32 read by NumPy {np.__version__})")


main()
