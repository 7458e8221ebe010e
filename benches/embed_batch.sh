#!/usr/bin/env bash
# `batch embed --via batch` against the live `batch embed`, in the same run, on one `batch mock`
# process: ROWS rows of ~30 tokens (generated in a temp folder, removed at the end), default
# per-request limits (2,048 texts, 300,000 tokens), DIMS dimensions. The mock answers live
# requests after LATENCY ms (-j 16) and ends each batch BATCH_LATENCY ms after its creation.
# Reports, for each: wall time, requests (lines), batches, peak RSS, and the cost from the summary;
# then the ratios. The vectors of both files are compared (they must be identical).
#
# Usage: benches/embed_batch.sh [ROWS] [DIMS] [LATENCY_MS] [BATCH_LATENCY_MS]
#        (defaults 1000000, 64, 100, 2000)
# Env:   BATCH=path/to/batch (default target/release/batch, built if missing)
set -euo pipefail

ROWS=${1:-1000000}
DIMS=${2:-64}
LATENCY=${3:-100}
BATCH_LATENCY=${4:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BATCH=${BATCH:-$ROOT/target/release/batch}
[[ -x $BATCH ]] || (cd "$ROOT" && cargo build --release)
DIR=$(mktemp -d)
cd "$DIR"
python3 - "$ROWS" <<'EOF'
import sys
n = int(sys.argv[1])
words = ("the blender was fine and arrived in three days but the lid cracked after a week "
         "of daily smoothies so I asked for a refund").split()
with open("rows.csv", "w") as f:
    f.write("id,text\n")
    for i in range(n):
        f.write(f"r{i},row {i}: " + " ".join(words[(i + k) % len(words)] for k in range(24)) + "\n")
EOF
"$BATCH" mock --port 0 --latency-ms "$LATENCY" --batch-latency-ms "$BATCH_LATENCY" \
    > mock.url 2> /dev/null &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do [[ -s mock.url ]] && break; sleep 0.1; done
URL=$(head -1 mock.url | grep -o 'http://[^ ]*')

measure() { # NAME ARGS...
    local name=$1
    shift
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$name.rss" "$BATCH" embed rows.csv --column text --base-url "$URL" \
        --dimensions "$DIMS" -q -o "$name.npy" --summary-json "$name.json" "$@" || true
    end=$(date +%s.%N)
    echo "$start $end" > "$name.time"
}

before=$(curl -s "${URL%/v1}/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
measure live -j 16 --no-cache
after=$(curl -s "${URL%/v1}/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
echo $((after - before)) > live.requests
measure via --via batch
curl -s "${URL%/v1}/stats/batches" > batches.json

python3 - "$ROWS" "$DIMS" "$LATENCY" "$BATCH_LATENCY" <<'EOF'
import json, sys
rows, dims, latency, blat = sys.argv[1:5]
rows = int(rows)
def run(name):
    start, end = map(float, open(f"{name}.time").read().split())
    s = json.load(open(f"{name}.json"))
    return end - start, int(open(f"{name}.rss").read().split()[-1]) / 1024, s
lw, lr, ls = run("live")
vw, vr, vs = run("via")
b = json.load(open("batches.json"))
same = open("live.npy", "rb").read() == open("via.npy", "rb").read()
print(f"{rows} rows of ~30 tokens, {dims} dims; mock: {latency} ms a live request, batches end after {blat} ms")
print(f"  live -j 16   wall {lw:7.1f} s  peak RSS {lr:5.0f} MB  requests {open('live.requests').read().strip():>6}  "
      f"ok {ls['ok']}  cost ${ls['cost_usd']}")
print(f"  --via batch  wall {vw:7.1f} s  peak RSS {vr:5.0f} MB  lines {b['requests']:>9}  "
      f"in {b['batches']} batches  ok {vs['ok']}  cost ${vs['cost_usd']}")
print(f"  ratios       wall {vw / lw:.2f}x, peak RSS {vr / lr:.2f}x, cost {vs['cost_usd'] / ls['cost_usd']:.3f}x")
print(f"  vectors      {'identical' if same else 'DIFFERENT'} (.npy files byte for byte)")
EOF
