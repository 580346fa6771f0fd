#!/usr/bin/env bash
# Projection benchmarks, in one run on this machine:
#   rebuild:  `projector rebuild` of EVENTS events (real NYC weather rows in
#             replicate studies, loaded through the command API), against a
#             raw baseline: pgbench running one INSERT … ON CONFLICT DO UPDATE
#             of 1000 rows of the same shape per transaction, on one
#             connection like the rebuild;
#   lag:      the projector running while research-bench records
#             observations at half the rate measured for 64 connections;
#             the projection delay (commit to projection) from its metrics.
# Settings: EVENTS (default 1000000), SECONDS_PER_RUN (default 15).
set -euo pipefail
source "$(dirname "$0")/common.sh"
EVENTS=${EVENTS:-1000000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
PROJECTOR_PORT=${PROJECTOR_PORT:-18083}
bench_setup projection

started=$(date +%s.%N)
load_weather "$EVENTS"
events=$("${PSQL[@]}" -d "$DB" -c "SELECT max(position) FROM events")
load_s=$(python3 -c "import time; print(time.time() - $started)")
printf '[bench] %s events loaded in %.0f s (%.0f events/s through the batch endpoint)\n' "$events" "$load_s" \
    "$(python3 -c "print($events / $load_s)")"

echo "[bench] projector rebuild"
started=$(date +%s.%N)
"$BIN/projector" rebuild 2>"$WORK/rebuild.err" | tail -1
rebuild_s=$(python3 -c "import time; print(time.time() - $started)")
rebuild_rate=$(python3 -c "print($events / $rebuild_s)")

# The raw baseline: batched upserts of rows shaped like the observation rows
# the rebuild wrote (same columns, a real document as body).
"${PSQL[@]}" -d "$DB" -c "CREATE TABLE bench_upsert (LIKE read_model.observations INCLUDING ALL)"
cat >"$WORK/upsert.sql" <<SQL
INSERT INTO bench_upsert (id, study_id, subject_id, observed_at, live, authors, body, position)
SELECT gen_random_uuid(), t.study_id, t.subject_id, t.observed_at, true, t.authors, t.body, g
FROM generate_series(1, 1000) AS g, (SELECT * FROM read_model.observations LIMIT 1) AS t
ON CONFLICT (id) DO UPDATE SET authors = EXCLUDED.authors, body = EXCLUDED.body, position = EXCLUDED.position;
SQL
raw_tps=$(pgbench -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -n -c 1 -j 1 -T "$SECONDS_PER_RUN" -f "$WORK/upsert.sql" "$DB" 2>/dev/null \
    | awk '/^tps = / {print $3}')
raw_rate=$(python3 -c "print($raw_tps * 1000)")
printf '\n%-34s %14s\n' "" "rows/s"
printf '%-34s %14.0f\n' "raw batched upsert (1000/stmt)" "$raw_rate"
printf '%-34s %14.0f   (%.2f x raw)\n' "projector rebuild (events/s)" "$rebuild_rate" "$(python3 -c "print($rebuild_rate / $raw_rate)")"

echo
echo "[bench] projection lag under a live load"
PROJECTOR_ADDR=127.0.0.1:$PROJECTOR_PORT "$BIN/projector" >"$WORK/projector.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$PROJECTOR_PORT/readyz"
catch_up() {
    for _ in $(seq 1 300); do
        cp=$("${PSQL[@]}" -d "$DB" -c "SELECT position FROM read_model.checkpoint")
        head=$("${PSQL[@]}" -d "$DB" -c "SELECT max(position) FROM events")
        [ "$cp" = "$head" ] && return
        sleep 1
    done
}
catch_up
# The maximum rate with the projector running, then half of it.
half=$("$BIN/research-bench" write --api "$API" --token "$TOKEN" --connections 64 --seconds 5 --json \
    | python3 -c "import json,sys; print(round(json.load(sys.stdin)['rate'] / 2))")
catch_up
curl -fsS "http://127.0.0.1:$PROJECTOR_PORT/metrics" >"$WORK/before.prom"
"$BIN/research-bench" write --api "$API" --token "$TOKEN" --connections 64 --seconds "$SECONDS_PER_RUN" --rate "$half"
sleep 2
curl -fsS "http://127.0.0.1:$PROJECTOR_PORT/metrics" >"$WORK/after.prom"
python3 - "$WORK/before.prom" "$WORK/after.prom" <<'PY'
import re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'projector_event_delay_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
delta = sorted(((float('inf') if k == '+Inf' else float(k)), b[k] - a.get(k, 0)) for k in b)
total = delta[-1][1] if delta else 0
def quantile(q):
    for le, count in delta:
        if count >= q * total:
            return le
print(f"projection delay over {total:.0f} batches: p50 <= {quantile(0.5) * 1000:.0f} ms, p99 <= {quantile(0.99) * 1000:.0f} ms (histogram bucket bounds)")
PY
