#!/usr/bin/env bash
# Read-your-writes latency, in one run on this machine: how soon after the
# command API answers a RecordObservation is its document readable from the
# query API (on the hot standby) with the answer's Consistency-Token.
#   max:   the command API's maximum rate (closed loop, CLIENTS connections,
#          the projector live, warming Redis);
#   idle:  probes alone (a background of one command a second);
#   half:  probes under a background load of half the maximum rate.
# Each probe is one more real weather observation, PROBES a second; its
# latency runs from the command's answer to the document's (one request on
# a kept-alive connection, which waits in the query API until the token's
# position is readable). A 503 is a read that waited past the query API's
# bound (QUERY_API_CONSISTENCY_TIMEOUT).
# Settings: CLIENTS (16), SECONDS_PER_STEP (20), PROBES (20), ROUNDS (2),
# QUERY_API_BIN (this tree's release query-api; another build's to compare).
set -euo pipefail
source "$(dirname "$0")/common.sh"
CLIENTS=${CLIENTS:-16}
SECONDS_PER_STEP=${SECONDS_PER_STEP:-20}
PROBES=${PROBES:-20}
ROUNDS=${ROUNDS:-2}
QUERY_PORT=${QUERY_PORT:-18082}
PROJECTOR_PORT=${PROJECTOR_PORT:-18083}
bench_setup visible
PREFIX=benchvisible$RUN_ID
REDIS=redis://127.0.0.1:$REDIS_PORT
redis_cleanup() {
    redis-cli -p "$REDIS_PORT" --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" DEL >/dev/null || true
    bench_cleanup
}
trap redis_cleanup EXIT

REDIS_URL=$REDIS REDIS_PREFIX=$PREFIX PROJECTOR_ADDR=127.0.0.1:$PROJECTOR_PORT "$BIN/projector" >"$WORK/projector.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$PROJECTOR_PORT/readyz"
QUERY_API_ADDR=127.0.0.1:$QUERY_PORT REDIS_URL=$REDIS REDIS_PREFIX=$PREFIX \
    REPLICA_DATABASE_URL="$READ_REPLICA_URL" \
    "${QUERY_API_BIN:-$BIN/query-api}" >"$WORK/query.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$QUERY_PORT/readyz"
TOKEN=$("$BIN/mint-token" --sub bench --roles writer,reader)
QUERY="http://127.0.0.1:$QUERY_PORT"
STUDY=(--study-file "$WORK/study.json")

printf '\n%-6s %5s %12s %10s %8s %8s %8s %8s %6s\n' step round "background/s" probes "p50 ms" "p99 ms" "max ms" "503" failed
for ROUND in $(seq 1 "$ROUNDS"); do
    max=$("$BIN/research-bench" write --api "$API" --token "$TOKEN" --connections "$CLIENTS" \
        --seconds "$SECONDS_PER_STEP" --json "${STUDY[@]}")
    rate=$(field "$max" rate)
    printf '%-6s %5s %12s %10s %8s %8s %8s %8s %6s\n' max "$ROUND" "$rate" - - "$(field "$max" p99_ms)" - - -
    for step in idle half; do
        background=1
        [ "$step" = half ] && background=$(python3 -c "print(round($rate / 2))")
        out=$("$BIN/research-bench" visible --api "$API" --query "$QUERY" --token "$TOKEN" \
            --connections "$CLIENTS" --rate "$background" --seconds "$SECONDS_PER_STEP" --probes "$PROBES" \
            --json "${STUDY[@]}")
        printf '%-6s %5s %12s %10s %8s %8s %8s %8s %6s\n' "$step" "$ROUND" "$(field "$out" background_rate)" \
            "$(field "$out" probes)" "$(field "$out" p50_ms)" "$(field "$out" p99_ms)" "$(field "$out" max_ms)" \
            "$(field "$out" unavailable)" "$(field "$out" failed)"
    done
done
echo
echo "max: the command API's closed-loop rate (p99 ms of its commands); idle and half: read-your-writes"
echo "latency of the probes (command answered -> document read with its token) with a background load"
echo "of one command a second and of half the maximum rate."
