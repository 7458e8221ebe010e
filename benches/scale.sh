#!/usr/bin/env bash
# Issue 15's scale benchmark: a run of ROWS rows (~60 bytes each, generated here, never kept) on
# the zero-latency mock with default settings (cache and dedup on), then a resume of it with
# 90% finished. Reports rows/s, peak RSS, state file vs results CSV, the time from the resume's
# start to its first request, and how many requests the resume sent.
#
# Usage: benches/scale.sh [ROWS]   (default 1000000; the issue's figure is 10000000)
# Env:   BATCH=path/to/batch (default target/release/batch, built if missing)
#        SCALE_DIR=folder for the data (default a new temp folder, removed at the end)
#        SCALE_INPROC=1 to run the mock inside the run (`--mock=latency-ms=0`, the issue's
#        command; peak RSS then includes the mock's tokenizer) instead of a `batch mock` process.
#        SCALE_RESUME_ONLY=1 to measure only the resume: the run is killed after its first
#        thousand requests and its state filled up to 90% finished by SQL (copies of a recorded
#        row), which takes minutes where sending 9,000,000 rows takes most of an hour.
#        SCALE_REUSE=1 (with SCALE_DIR, after a first SCALE_RESUME_ONLY=1 there) measures the
#        resume again on the same input and state: no generation, no first run, no fill.
set -euo pipefail

ROWS=${1:-1000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BATCH=${BATCH:-$ROOT/target/release/batch}
[[ -x $BATCH ]] || (cd "$ROOT" && cargo build --release)
DIR=${SCALE_DIR:-$(mktemp -d)}
mkdir -p "$DIR"
[[ -n ${SCALE_DIR:-} ]] || trap 'rm -rf "$DIR"' EXIT
cd "$DIR"

REUSE=
[[ -n ${SCALE_REUSE:-} && -f rows.csv && -f out.sqlite ]] && REUSE=1
[[ -n $REUSE ]] || { echo "generating $ROWS rows in $DIR" >&2; python3 - "$ROWS" <<'EOF'
import random, sys
n = int(sys.argv[1]); random.seed(1)
words = "good bad fine okay great poor slow fast cheap pricey broken solid nice ugly".split()
with open("rows.csv", "w") as f:
    f.write("id,review\n")
    for i in range(n):
        f.write(f"r{i},{' '.join(random.choice(words) for _ in range(9))} {i}\n")
EOF
}

# A mock in its own process (unless SCALE_INPROC), so that the resume can count its requests.
MOCK_PID=
if [[ -z ${SCALE_INPROC:-} ]]; then
    # A resume must reach the same endpoint: a reused folder's mock takes the port it had.
    PORT=0
    [[ -n $REUSE && -s mock.port ]] && PORT=$(cat mock.port)
    "$BATCH" mock --port "$PORT" --latency-ms 0 > mock.url &
    MOCK_PID=$!
    trap 'kill $MOCK_PID 2>/dev/null || true; [[ -n ${SCALE_DIR:-} ]] || rm -rf "$DIR"' EXIT
    for _ in $(seq 100); do [[ -s mock.url ]] && break; sleep 0.1; done
    URL=$(head -1 mock.url | grep -o 'http://[^ ]*')
    ENDPOINT=(--base-url "$URL")
    ADDR=${URL#http://}; ADDR=${ADDR%%/*}
    echo "${ADDR##*:}" > mock.port
else
    ENDPOINT=(--mock=latency-ms=0)
fi
requests() { curl -s "http://$ADDR/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])'; }

RUN=("$BATCH" run rows.csv --prompt 'Classify: {{ review }}' "${ENDPOINT[@]}" -o out.csv -q)
echo "load before the run: $(uptime)"

if [[ -n $REUSE ]]; then
    echo "reusing rows.csv and out.sqlite in $DIR" >&2
elif [[ -n ${SCALE_RESUME_ONLY:-} && -n $MOCK_PID ]]; then
    BATCH_CACHE_DIR=$DIR/cache "${RUN[@]}" &
    RUN_PID=$!
    for _ in $(seq 3000); do
        [[ $(requests) -gt 1000 ]] && break
        sleep 0.1
    done
    kill -9 $RUN_PID; wait $RUN_PID 2>/dev/null || true
    echo "filling the state to 90% finished" >&2
    python3 - "$ROWS" <<'EOF'
import sqlite3, sys
n = int(sys.argv[1]); db = sqlite3.connect("out.sqlite")
cols = [r[1] for r in db.execute("PRAGMA table_info(rows)") if r[1] not in ("seq", "id", "request_hash")]
c = ", ".join(cols)
db.execute(f"""INSERT OR IGNORE INTO rows (seq, id, request_hash, {c})
    WITH RECURSIVE s(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM s WHERE k < ? - 1)
    SELECT k, 'r' || k, randomblob(16), {c} FROM s,
        (SELECT {c} FROM rows WHERE status = 'ok' LIMIT 1)""", (n * 9 // 10,))
db.commit()
EOF
else
BATCH_CACHE_DIR=$DIR/cache /usr/bin/time -v -o time.txt "${RUN[@]}" || true
secs=$(grep 'Elapsed (wall clock)' time.txt | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
rss=$(grep 'Maximum resident' time.txt | awk '{print $NF}')
state=$(stat -c %s out.sqlite)
csv=$(stat -c %s out.csv)
python3 - "$ROWS" "$secs" "$rss" "$state" "$csv" <<'EOF'
import sys
rows, secs, rss, state, csv = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"run:    {rows} rows in {secs:.1f} s = {rows/secs:.0f} rows/s, peak RSS {rss/1024:.1f} MB")
print(f"state:  {state/1e6:.1f} MB for a {csv/1e6:.1f} MB results CSV ({state/csv:.2f}x)")
EOF
fi
echo "load before the resume: $(uptime)"

[[ -n $MOCK_PID ]] || exit 0
# Resume with 90% finished: the last 10% of rows are taken out of the state file, and a fresh
# cache (the old one has their answers) makes the resume send them.
python3 - "$ROWS" <<'EOF'
import sqlite3, sys
n = int(sys.argv[1]); db = sqlite3.connect("out.sqlite")
db.execute("DELETE FROM rows WHERE seq >= ?", (n * 9 // 10,))
db.execute("DELETE FROM attempts WHERE seq >= ?", (n * 9 // 10,))
db.execute("UPDATE meta SET value = 'false' WHERE key = 'finished'")
db.commit()
EOF
rm -rf "$DIR/cache2" resume.jsonl
before=$(requests)
# The first request's time is read from the audit log (`--log`: each attempt's start time).
start=$(date +%s.%N)
BATCH_CACHE_DIR=$DIR/cache2 /usr/bin/time -v -o time2.txt "${RUN[@]}" --resume --log resume.jsonl || true
sent=$(( $(requests) - before ))
python3 - "$start" "$sent" "$(( ROWS - ROWS * 9 / 10 ))" <<'EOF'
import datetime, itertools, json, sys
start, sent, unfinished = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with open("resume.jsonl") as f:
    times = [json.loads(line)["time"] for line in itertools.islice(f, 1000)]
first = min(datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in times)
rss = [l.split()[-1] for l in open("time2.txt") if "Maximum resident" in l][0]
print(f"resume: first request after {first - start:.2f} s; sent {sent} requests for "
      f"{unfinished} unfinished rows; peak RSS {int(rss) / 1024:.1f} MB")
EOF
