#!/usr/bin/env bash
# Write-path benchmark, in one run on this machine:
#   raw baseline: pgbench inserting one event-like row per transaction into a
#                 copy of the `events` table (same columns, indexes and
#                 constraints), at 16 and 64 clients;
#   service:      research-bench recording real weather observations through
#                 the command API (durable appends) at 16 and 64 connections,
#                 then at half the maximum rate for the latency goal.
# Settings: SECONDS_PER_RUN (default 10), API_PORT (default 18081).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
bench_setup write

# The baseline table: the events table's shape without its append-only
# triggers, and the same real weather row as payload.
"${PSQL[@]}" -d "$DB" -c "CREATE TABLE bench_events (LIKE events INCLUDING ALL); CREATE SEQUENCE bench_seq"

pgbench_tps() {
    pgbench -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -n -c "$1" -j 2 -T "$SECONDS_PER_RUN" -f benches/event-insert.sql "$DB" 2>/dev/null \
        | awk '/^tps = / {print $3}'
}
api_run() {
    "$BIN/research-bench" write --api "$API" --token "$TOKEN" --seconds "$SECONDS_PER_RUN" --json "$@"
}

printf '\n%-12s %14s %14s %8s %10s %10s\n' clients "pgbench tx/s" "api appends/s" ratio "p50 ms" "p99 ms"
best=0
for c in 16 64; do
    raw=$(pgbench_tps "$c")
    out=$(api_run --connections "$c")
    rate=$(field "$out" rate)
    ratio=$(python3 -c "print(f'{$rate / $raw:.2f}')")
    printf '%-12s %14.0f %14.0f %8s %10.2f %10.2f\n' "$c" "$raw" "$rate" "$ratio" "$(field "$out" p50_ms)" "$(field "$out" p99_ms)"
    best=$(python3 -c "print(max($best, $rate))")
done
half=$(python3 -c "print(round($best / 2))")
out=$(api_run --connections 64 --rate "$half")
printf '\nat half the maximum rate (%s req/s target, 64 connections): %.0f req/s, p50 %.2f ms, p99 %.2f ms, %s errors\n' \
    "$half" "$(field "$out" rate)" "$(field "$out" p50_ms)" "$(field "$out" p99_ms)" "$(field "$out" errors)"
