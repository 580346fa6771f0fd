#!/usr/bin/env bash
# Batched ingestion, in one run on this machine, rounds interleaved:
#   raw baseline: pgbench inserting BATCH event-like rows per transaction
#                 (one statement; the row of event-insert.sql) into a copy
#                 of `events`, at CONNECTIONS clients;
#   service:      research-bench posting batches of BATCH real weather
#                 observations to /v1/commands at CONNECTIONS connections,
#                 closed loop, with the projector live and warming Redis;
#   catch-up:     seconds from the end of the load until the read tables'
#                 checkpoint and Redis's `through` mark hold the last event.
# Settings: BATCH (100), CONNECTIONS (4), SECONDS_PER_RUN (15), ROUNDS (2).
set -euo pipefail
source "$(dirname "$0")/common.sh"
BATCH=${BATCH:-100}
CONNECTIONS=${CONNECTIONS:-4}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
ROUNDS=${ROUNDS:-2}
PROJECTOR_PORT=${PROJECTOR_PORT:-18083}
bench_setup batch
PREFIX=benchbatch$RUN_ID
redis_cleanup() {
    redis-cli -p "$REDIS_PORT" --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" DEL >/dev/null || true
    bench_cleanup
}
trap redis_cleanup EXIT

"${PSQL[@]}" -d "$DB" -c "CREATE TABLE bench_events (LIKE events INCLUDING ALL); CREATE SEQUENCE bench_seq"
# event-insert.sql's row, BATCH times in one statement.
python3 - benches/event-insert.sql "$BATCH" >"$WORK/batch-insert.sql" <<'PY'
import sys
sql = open(sys.argv[1]).read()
sql = "\n".join(l for l in sql.splitlines() if not l.startswith("--"))
sql = sql.replace("VALUES (", "SELECT ", 1).rstrip()
assert sql.endswith(");")
print(sql[:-2] + f" FROM generate_series(1, {int(sys.argv[2])});")
PY

REDIS_URL=redis://127.0.0.1:$REDIS_PORT REDIS_PREFIX=$PREFIX PROJECTOR_ADDR=127.0.0.1:$PROJECTOR_PORT \
    "$BIN/projector" >"$WORK/projector.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$PROJECTOR_PORT/readyz"

# Seconds until the read tables and Redis hold the log's head (at most 120).
catch_up() {
    python3 - "$DB_USER" "$DB_PASSWORD" "$PG_PORT" "$DB" "$REDIS_PORT" "$PREFIX" <<'PY'
import subprocess, sys, time
user, password, port, db, redis_port, prefix = sys.argv[1:]
def sql(q):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", user, "-d", db, "-Atqc", q],
                          env={"PGPASSWORD": password, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, check=True).stdout.strip()
head = int(sql("SELECT max(position) FROM events") or 0)
started = time.time()
while time.time() - started < 120:
    checkpoint = int(sql("SELECT position FROM read_model.checkpoint") or 0)
    through = subprocess.run(["redis-cli", "-p", redis_port, "GET", f"{prefix}:through"],
                             capture_output=True, text=True).stdout.strip()
    if checkpoint >= head and through and int(through) >= head:
        break
    time.sleep(0.05)
print(f"{time.time() - started:.2f}")
PY
}

STUDY=(--study-file "$WORK/study.json")
printf '\n%-6s %16s %16s %7s %10s %10s %10s\n' round "pgbench rows/s" "api events/s" ratio "p50 ms" "p99 ms" "catch-up s"
for round in $(seq 1 "$ROUNDS"); do
    tps=$(pgbench -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -n -c "$CONNECTIONS" -j 2 -T "$SECONDS_PER_RUN" \
        -f "$WORK/batch-insert.sql" "$DB" 2>/dev/null | awk '/^tps = / {print $3}')
    raw=$(python3 -c "print(round($tps * $BATCH))")
    out=$("$BIN/research-bench" write --api "$API" --token "$TOKEN" --connections "$CONNECTIONS" \
        --seconds "$SECONDS_PER_RUN" --batch "$BATCH" --json "${STUDY[@]}")
    caught=$(catch_up)
    events=$(field "$out" events_per_s)
    printf '%-6s %16s %16s %7s %10s %10s %10s\n' "$round" "$raw" "$events" \
        "$(python3 -c "print(f'{$events / $raw:.2f}x')")" "$(field "$out" p50_ms)" "$(field "$out" p99_ms)" "$caught"
    [ "$(field "$out" errors)" = 0 ] || echo "[bench] $(field "$out" errors) batches failed" >&2
done
echo
echo "pgbench: $BATCH rows a transaction in one INSERT; api: batches of $BATCH RecordObservation commands"
echo "(p50/p99 per request); catch-up: from the end of the load until the read tables and Redis held the last event."
