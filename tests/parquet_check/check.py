"""Reads what `batch` writes as Parquet with pyarrow and pandas, and checks types and values.

1. pyarrow writes a typed input (int64, string with a null and unicode, float64 with a null,
   bool, timestamp[ms, UTC], list<string>);
2. `batch run input.parquet --mock -o results.parquet` answers every row on the embedded mock;
3. pyarrow and pandas read the results: the input columns keep their types and values (the list
   comes back as its JSON text), result columns are int64 / double / bool / string, errors null;
4. with VECTORS set, the vector file: fixed_size_list<float>[dims], nulls for failed rows, the
   values that were written (VECTORS_EXPECTED), and a (rows, dims) float32 numpy matrix.

Prints PASSED, or FAILED with the reasons (exit 1).
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def mock_answer(prompt):
    """The embedded mock's answer: it quotes the prompt, whitespace folded (prompts here are
    shorter than 80 characters, so quoted whole)."""
    return 'mock answer to "%s"' % " ".join(prompt.split())


def check_results(bin_path, work):
    at = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    table = pa.table(
        {
            "id": pa.array([10, 20, 30], pa.int64()),
            "text": pa.array(["héllo 世界 🎉", None, "third, \"quoted\""], pa.string()),
            "n": pa.array([1.5, None, -3.0], pa.float64()),
            "flag": pa.array([True, False, True]),
            "at": pa.array([at, at, at], pa.timestamp("ms", tz="UTC")),
            "tags": pa.array([["a", "b"], [], ["ü"]], pa.list_(pa.string())),
        }
    )
    src = os.path.join(work, "input.parquet")
    dest = os.path.join(work, "results.parquet")
    pq.write_table(table, src, row_group_size=2)
    run = subprocess.run(
        [bin_path, "run", src, "--prompt", "{{ id }}: {{ text }} {{ n }}", "--mock", "-o", dest, "-q", "--no-cache"],
        capture_output=True,
        text=True,
        cwd=work,
    )
    if run.returncode != 0:
        failures.append("batch run exited %d: %s" % (run.returncode, run.stderr))
        return
    res = pq.read_table(dest)
    schema = res.schema
    want_types = {
        "id": pa.int64(),
        "text": pa.string(),
        "n": pa.float64(),
        "flag": pa.bool_(),
        "at": pa.timestamp("ms", tz="UTC"),
        "tags": pa.string(),
        "output": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "attempts": pa.int64(),
        "latency_ms": pa.int64(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "cost_usd": pa.float64(),
        "cached": pa.bool_(),
    }
    for name, t in want_types.items():
        check(name in schema.names, "results have no column %s" % name)
        if name in schema.names:
            got = schema.field(name).type
            check(got == t, "%s is %s, expected %s" % (name, got, t))
    rows = res.to_pylist()
    check(len(rows) == 3, "3 rows expected, got %d" % len(rows))
    check([r["id"] for r in rows] == [10, 20, 30], "ids: %r" % [r["id"] for r in rows])
    check(rows[1]["text"] is None and rows[1]["n"] is None, "nulls stay null: %r" % rows[1])
    check(rows[0]["text"] == "héllo 世界 🎉", "unicode: %r" % rows[0]["text"])
    check(rows[0]["at"] == at, "timestamp: %r" % rows[0]["at"])
    check(rows[0]["tags"] == '["a","b"]', "list as JSON text: %r" % rows[0]["tags"])
    prompts = ["10: héllo 世界 🎉 1.5", "20:  ", '30: third, "quoted" -3.0']
    for r, p in zip(rows, prompts):
        check(r["status"] == "ok", "status: %r" % r)
        check(r["error"] is None, "error is null on success: %r" % r["error"])
        check(r["output"] == mock_answer(p), "output %r for prompt %r" % (r["output"], p))
        check(r["prompt_tokens"] > 0 and r["cost_usd"] > 0, "tokens and cost: %r" % r)
    frame = pd.read_parquet(dest)
    check(str(frame["prompt_tokens"].dtype) == "int64", "pandas: %s" % frame["prompt_tokens"].dtype)
    check(str(frame["cost_usd"].dtype) == "float64", "pandas: %s" % frame["cost_usd"].dtype)
    check(str(frame["flag"].dtype) == "bool", "pandas: %s" % frame["flag"].dtype)
    check("UTC" in str(frame["at"].dtype), "pandas: %s" % frame["at"].dtype)
    check(frame["n"].isna().tolist() == [False, True, False], "pandas nulls: %r" % frame["n"])


def check_vectors(path, expected_path):
    with open(expected_path, encoding="utf-8") as f:
        expected = json.load(f)
    dims = expected["dims"]
    pf = pq.ParquetFile(path)
    table = pf.read()
    emb = table.schema.field("embedding").type
    check(
        emb == pa.list_(pa.field("item", pa.float32(), nullable=False), dims),
        "embedding is %s, expected fixed_size_list<float>[%d]" % (emb, dims),
    )
    check(table.schema.field("line").type == pa.uint64(), "line: %s" % table.schema.field("line").type)
    check(table.schema.field("tokens").type == pa.uint32(), "tokens: %s" % table.schema.field("tokens").type)
    check(table.num_rows == len(expected["rows"]), "rows: %d" % table.num_rows)
    got = table.to_pylist()
    for g, e in zip(got, expected["rows"]):
        for k in ("line", "id", "status", "error", "tokens"):
            check(g[k] == e[k], "row %s: %s is %r, expected %r" % (e["line"], k, g[k], e[k]))
        if e["embedding"] is None:
            check(g["embedding"] is None, "row %s: a failed row has a null vector" % e["line"])
        else:
            check(g["embedding"] == e["embedding"], "row %s: vector differs" % e["line"])
    ok = table.filter(pa.compute.is_valid(table["embedding"]))
    matrix = ok["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dims)
    check(str(matrix.dtype) == "float32", "numpy dtype %s" % matrix.dtype)
    check(matrix.shape[0] == ok.num_rows, "numpy shape %r" % (matrix.shape,))
    check(pf.metadata.num_row_groups >= 1, "row groups")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        check_results(os.path.abspath(args.bin), work)
    vectors = os.environ.get("VECTORS")
    if vectors:
        check_vectors(vectors, os.environ["VECTORS_EXPECTED"])
    print("pyarrow %s, pandas %s" % (pa.__version__, pd.__version__))
    if failures:
        for f in failures:
            print("FAILED: " + f)
        sys.exit(1)
    print("PASSED: results%s read by pyarrow and pandas" % (" and vectors" if vectors else ""))


if __name__ == "__main__":
    main()
