#!/usr/bin/env bash
# Issue 17's embeddings benchmark: ROWS rows of ~30 tokens (generated here in a temp folder,
# removed at the end) embedded by `batch embed` on a `batch mock` process answering after
# LATENCY ms, with -j 16 and the default per-request limits (2,048 inputs, 300,000 tokens).
# Reports rows/s, the requests the mock received, rows per request, and peak RSS of the run.
#
# Usage: benches/embed.sh [ROWS] [LATENCY_MS] [DIMS]   (defaults 1000000, 100 and 64)
# Env:   BATCH=path/to/batch (default target/release/batch, built if missing)
#        EMBED_DIR=folder for the data (default a new temp folder, removed at the end)
# DIMS is kept small by default so the state file stays small (a 1,536-float vector is 8 KB of
# base64 in the journal a row); pass 1536 to measure full-size vectors.
set -euo pipefail

ROWS=${1:-1000000}
LATENCY=${2:-100}
DIMS=${3:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BATCH=${BATCH:-$ROOT/target/release/batch}
[[ -x $BATCH ]] || (cd "$ROOT" && cargo build --release)
DIR=${EMBED_DIR:-$(mktemp -d)}
mkdir -p "$DIR"
cd "$DIR"
python3 - "$ROWS" <<'EOF'
import sys
n = int(sys.argv[1])
words = ("the blender was fine and arrived in three days but the lid cracked after a week "
         "of daily smoothies so I asked for a refund").split()
with open("rows.csv", "w") as f:
    f.write("id,text\n")
    for i in range(n):
        # ~30 tokens, each row different (dedup and cache never help).
        f.write(f"r{i},row {i}: " + " ".join(words[(i + k) % len(words)] for k in range(24)) + "\n")
EOF
"$BATCH" mock --port 0 --latency-ms "$LATENCY" > mock.url 2> /dev/null &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true; [[ -n ${EMBED_DIR:-} ]] || rm -rf "$DIR"' EXIT
for _ in $(seq 100); do [[ -s mock.url ]] && break; sleep 0.1; done
URL=$(head -1 mock.url | grep -o 'http://[^ ]*')

start=$(date +%s.%N)
/usr/bin/time -f "%M" -o rss.txt "$BATCH" embed rows.csv --column text --base-url "$URL" \
    --dimensions "$DIMS" -j 16 --no-cache -q -o out.npy --summary-json summary.json || true
end=$(date +%s.%N)
curl -s "${URL%/v1}/stats" > stats.json

python3 - "$ROWS" "$start" "$end" "$LATENCY" "$DIMS" <<'EOF'
import json, os, sys
rows, start, end, latency, dims = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
stats = json.load(open("stats.json"))
summary = json.load(open("summary.json"))
wall = end - start
requests = stats["requests"]
rss_mb = int(open("rss.txt").read().split()[-1]) / 1024
print(f"batch embed: {rows} rows of ~30 tokens, mock at {latency} ms, -j 16, {dims} dims")
print(f"  ok rows        {summary['ok']} (failed {summary['failed']}, skipped {summary['skipped']})")
print(f"  wall           {wall:.1f} s (run's own: {summary['wall_seconds']:.1f} s)")
print(f"  rows/s         {rows / wall:,.0f}")
print(f"  requests       {requests} ({rows / max(requests, 1):,.0f} rows a request; "
      f"{rows / max(requests, 1):.0f}x fewer than one request a row)")
print(f"  prompt tokens  {stats['prompt_tokens']:,}")
print(f"  peak RSS       {rss_mb:.0f} MB")
print(f"  state file     {os.path.getsize('out.sqlite') / 1e6:.0f} MB, out.npy {os.path.getsize('out.npy') / 1e6:.0f} MB")
EOF
