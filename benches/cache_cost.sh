#!/usr/bin/env bash
# What the response cache (on by default) costs a run: the same ROWS-row run on one zero-latency
# mock with the cache on (a fresh, empty cache each time: every answer is written) and with
# --no-cache, alternating for ROUNDS rounds; each round's ratio and the median are printed.
#
# Usage: benches/cache_cost.sh [ROWS] [ROUNDS]   (defaults 100000 and 3)
# Env:   BATCH=path/to/batch (default target/release/batch, built if missing)
set -euo pipefail

ROWS=${1:-100000}
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BATCH=${BATCH:-$ROOT/target/release/batch}
[[ -x $BATCH ]] || (cd "$ROOT" && cargo build --release)
DIR=$(mktemp -d)
cd "$DIR"
python3 - "$ROWS" <<'EOF'
import sys
n = int(sys.argv[1])
with open("rows.csv", "w") as f:
    f.write("id,review\n")
    for i in range(n):
        f.write(f"r{i},the blender was fine and arrived in three days {i}\n")
EOF
"$BATCH" mock --port 0 --latency-ms 0 > mock.url 2> /dev/null &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do [[ -s mock.url ]] && break; sleep 0.1; done
URL=$(head -1 mock.url | grep -o 'http://[^ ]*')

# Seconds for one run; the cache folder is new each time.
timed() {
    rm -rf cache out.*
    local start end
    start=$(date +%s.%N)
    BATCH_CACHE_DIR=$DIR/cache "$BATCH" run rows.csv --prompt '{{ review }}' --base-url "$URL" \
        -o out.csv -q "$@"
    end=$(date +%s.%N)
    python3 -c "print($end - $start)"
}

ratios=()
for round in $(seq "$ROUNDS"); do
    on=$(timed)
    off=$(timed --no-cache)
    ratio=$(python3 -c "print(f'{$off / $on:.3f}')")
    ratios+=("$ratio")
    python3 -c "print(f'round $round: cache on {$ROWS / $on:.0f} rows/s, off {$ROWS / $off:.0f} rows/s: on/off = $ratio')"
done
joined=$(IFS=,; echo "${ratios[*]}")
python3 -c "import statistics; r = [$joined]; print(f'median on/off throughput: {statistics.median(r):.3f} (rounds {r})')"
