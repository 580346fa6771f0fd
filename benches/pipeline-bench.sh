#!/usr/bin/env bash
# The whole write pipeline's cost per event, in one run on this machine:
#   raw baseline: pgbench inserting one event-like row per transaction into a
#                 copy of `events`, at CLIENTS clients;
#   service:      research-bench recording real weather observations through
#                 the command API at CLIENTS connections, with the projector
#                 running live and warming Redis (the hot standby replays
#                 the WAL as always).
# Per run: throughput; CPU of the whole machine per event (/proc/stat) and
# WAL per event (pg_current_wal_lsn), each with the baseline's per row; how
# long the projection took to reach the last event after the load stopped;
# resident memory (now and peak) of the command API and the projector; the
# updates of read-table rows that were HOT; the read tables' size against
# the events'.
#
# Several builds can be compared in one run, interleaved round by round:
# VARIANTS="new=/path/to/release old=/path/to/other/release" (default: this
# tree's release build as "new"). Every run has a database, a stream and a
# Redis prefix of its own. Build another checkout with a CARGO_TARGET_DIR of
# its own: cargo names a workspace's artifacts by their path relative to the
# workspace, so two checkouts sharing a target directory take each other's
# builds for fresh.
# A variant may also change the schema: VARIANT_SQL_<name> is run as the
# owner on the variant's database once the command API has migrated it and
# before the projector starts (for example to put back an index and measure
# what it costs).
# Cost that grows with the data shows with SIZES="10000 1000000": each run
# first grows its study to that many observations (through the batch
# endpoint, the projection catching up, the tables vacuumed and the standby
# caught up before the measurement), then measures while recording into the
# same study. The observations go forward in time, run after run (the
# weather rows moved by the data set's span each pass; see
# benches/src/feed.rs), as a study that keeps measuring grows.
# Settings: CLIENTS (16), SECONDS_PER_RUN (15), ROUNDS (2), SIZES (0).
set -euo pipefail
source "$(dirname "$0")/common.sh"
CLIENTS=${CLIENTS:-16}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
ROUNDS=${ROUNDS:-2}
SIZES=${SIZES:-0}
API_PORT=${API_PORT:-18081}
PROJECTOR_PORT=${PROJECTOR_PORT:-18083}

scripts/infra.sh >/dev/null
echo "[bench] building (release)"
cargo build --release --bins --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
VARIANTS=${VARIANTS:-new=$BIN}
export PGPASSWORD=$DB_PASSWORD
PSQL=(psql -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -v ON_ERROR_STOP=1 -Atq)
SERVICE_PASSWORD=${SERVICE_DB_PASSWORD:-$DB_PASSWORD}
WORK=$(mktemp -d)
PIDS=()
CURRENT_DB=
CURRENT_STREAM=
cleanup() {
    stop_services
    [ -n "$CURRENT_DB" ] && "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $CURRENT_DB WITH (FORCE)" || true
    [ -n "$CURRENT_STREAM" ] && "$BIN/research-bench" drop-stream "$CURRENT_STREAM" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
stop_services() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
# Busy jiffies of the whole machine (every process, kernel included).
busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
wal_lsn() { "${PSQL[@]}" -d postgres -c "SELECT pg_current_wal_lsn()"; }
wal_bytes() { "${PSQL[@]}" -d postgres -c "SELECT pg_wal_lsn_diff('$2', '$1')"; }
# CPU ticks a process has used (user + system).
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Resets a process's peak resident memory (VmHWM) to its current one.
reset_peak() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
rss_mb() { awk '/^'"$2"':/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
per_event_us() { python3 -c "print(round(($2 - $1) / $HZ * 1e6 / max($3, 1)))"; }

# Waits until the projection of database $1 holds every event (10 minutes
# at most).
caught_up() {
    local head
    head=$("${PSQL[@]}" -d "$1" -c "SELECT coalesce(max(position), 0) FROM events")
    for _ in $(seq 1 12000); do
        [ "$("${PSQL[@]}" -d "$1" -c "SELECT position FROM read_model.checkpoint")" -ge "$head" ] && return
        sleep 0.05
    done
    echo "[bench] the projection did not catch up with $head events" >&2
}

# After a prefill, what the burst left behind is done before measuring, as
# it would be long done in a study grown over months: the tables vacuumed
# and analysed (an autovacuum of a million fresh rows would otherwise run
# during the measurement) and the standby's replay caught up with the
# primary (10 minutes at most).
settle() {
    "${PSQL[@]}" -d "$1" -c "SET client_min_messages = error" -c "VACUUM (ANALYZE)"
    local lsn
    lsn=$(wal_lsn)
    for _ in $(seq 1 6000); do
        [ "$(psql -h 127.0.0.1 -p "${REPLICA_PORT:-5433}" -U "$DB_USER" -Atq -d postgres \
            -c "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '$lsn') >= 0")" = t ] && return
        sleep 0.1
    done
    echo "[bench] the standby did not replay the prefill within 10 minutes" >&2
}

# The baseline: one event-like row per transaction, like write-bench.sh.
baseline() {
    local db=bench_pipe_raw_$(date +%s)
    CURRENT_DB=$db
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"
    "${PSQL[@]}" -d "$db" -f benches/event-table.sql
    local cpu0 wal0 cpu1 wal1 rows
    cpu0=$(busy_jiffies); wal0=$(wal_lsn)
    pgbench -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
        -f benches/event-insert.sql "$db" >/dev/null 2>&1
    cpu1=$(busy_jiffies); wal1=$(wal_lsn)
    rows=$("${PSQL[@]}" -d "$db" -c "SELECT count(*) FROM bench_events")
    printf '%-8s %5s %8s %10.0f %8s %10s %8s %8s %10s %8s %8s %8s %8s %8s %8s\n' pgbench "$ROUND" - \
        "$(python3 -c "print($rows / $SECONDS_PER_RUN)")" - "$(per_event_us "$cpu0" "$cpu1" "$rows")" - - \
        "$(python3 -c "print(round($(wal_bytes "$wal0" "$wal1") / $rows))")" - - - - - -
    "${PSQL[@]}" -d postgres -c "DROP DATABASE $db WITH (FORCE)"
    CURRENT_DB=
}

# One run of the service built in $2, named $1, on a study grown to $3
# observations first.
service() {
    local name=$1 bin=$2 size=$3 id
    id=$(date +%s)_${name}_$ROUND
    local db=bench_pipe_$id stream=BENCH_PIPE_${id^^} prefix=benchpipe$id
    CURRENT_DB=$db CURRENT_STREAM=$stream
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"
    local owner="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$db"
    export NATS_STREAM=$stream NATS_SUBJECT_PREFIX=benchpipe$id RUST_LOG=warn
    MIGRATION_DATABASE_URL=$owner COMMAND_API_ADDR=127.0.0.1:$API_PORT \
        COMMAND_API_DATABASE_URL="postgres://research_command:$SERVICE_PASSWORD@127.0.0.1:$PG_PORT/$db" \
        "$bin/command-api" >"$WORK/api.log" 2>&1 &
    local api_pid=$!
    PIDS+=("$api_pid")
    wait_ready "http://127.0.0.1:$API_PORT/readyz"
    local variant_sql="VARIANT_SQL_$name"
    [ -n "${!variant_sql:-}" ] && "${PSQL[@]}" -d "$db" -c "${!variant_sql}"
    PROJECTOR_ADDR=127.0.0.1:$PROJECTOR_PORT REDIS_PREFIX=$prefix MIGRATION_DATABASE_URL= \
        PROJECTOR_DATABASE_URL="postgres://research_projector:$SERVICE_PASSWORD@127.0.0.1:$PG_PORT/$db" \
        "$bin/projector" >"$WORK/projector.log" 2>&1 &
    local projector_pid=$!
    PIDS+=("$projector_pid")
    wait_ready "http://127.0.0.1:$PROJECTOR_PORT/readyz"
    local token cpu0 wal0 cpu1 wal1 out events caught_up
    token=$("$BIN/mint-token" --sub bench --roles writer)
    local study=()
    if [ "$size" -gt 0 ]; then
        study=(--study-file "$WORK/study.json")
        rm -f "$WORK/study.json"
        "$BIN/research-bench" prefill --api "http://127.0.0.1:$API_PORT" --token "$token" \
            "${study[@]}" --events "$size" 2>&1 | tail -1 >&2
        caught_up "$db"
        settle "$db"
    fi
    local before
    before=$("${PSQL[@]}" -d "$db" -c "SELECT coalesce(max(position), 0) FROM events")
    local api0 projector0 api1 projector1
    # Peaks from here on: the prefill's burst is not the measured load.
    reset_peak "$api_pid"; reset_peak "$projector_pid"
    api0=$(proc_ticks "$api_pid"); projector0=$(proc_ticks "$projector_pid")
    cpu0=$(busy_jiffies); wal0=$(wal_lsn)
    out=$("$BIN/research-bench" write --api "http://127.0.0.1:$API_PORT" --token "$token" \
        --connections "$CLIENTS" --seconds "$SECONDS_PER_RUN" --json "${study[@]}")
    local ended
    ended=$(date +%s.%N)
    # The projection reaching the last event, after the load stopped.
    local head
    head=$("${PSQL[@]}" -d "$db" -c "SELECT max(position) FROM events")
    caught_up "$db"
    caught_up=$(python3 -c "import time; print(f'{time.time() - $ended:.2f}')")
    cpu1=$(busy_jiffies); wal1=$(wal_lsn)
    api1=$(proc_ticks "$api_pid"); projector1=$(proc_ticks "$projector_pid")
    events=$(( head - before ))
    local api_rss api_peak projector_rss hot sizes
    api_rss=$(rss_mb "$api_pid" VmRSS); api_peak=$(rss_mb "$api_pid" VmHWM)
    projector_rss=$(rss_mb "$projector_pid" VmHWM)
    sleep 1
    hot=$("${PSQL[@]}" -d "$db" -c "SELECT round(100.0 * sum(n_tup_hot_upd) / greatest(sum(n_tup_upd), 1))
        FROM pg_stat_user_tables WHERE schemaname = 'read_model' AND relname IN ('studies', 'subjects')")
    sizes=$("${PSQL[@]}" -d "$db" -c "SELECT round((pg_total_relation_size('read_model.observations')
        + pg_total_relation_size('read_model.subjects') + pg_total_relation_size('read_model.studies'))::numeric
        / pg_total_relation_size('events'), 2)")
    printf '%-8s %5s %8s %10.0f %8.1f %10s %8s %8s %10s %8s %8s %8s %8s %8s %8s\n' "$name" "$ROUND" "$size" \
        "$(field "$out" rate)" \
        "$(field "$out" p99_ms)" \
        "$(per_event_us "$cpu0" "$cpu1" "$events")" \
        "$(per_event_us "$api0" "$api1" "$events")" "$(per_event_us "$projector0" "$projector1" "$events")" \
        "$(python3 -c "print(round($(wal_bytes "$wal0" "$wal1") / $events))")" \
        "$caught_up" "$api_rss" "$api_peak" "$projector_rss" "$hot" "$sizes"
    stop_services
    "${PSQL[@]}" -d postgres -c "DROP DATABASE $db WITH (FORCE)"
    "$BIN/research-bench" drop-stream "$stream" >/dev/null 2>&1 || true
    redis-cli -p "${REDIS_PORT:-6379}" --scan --pattern "$prefix:*" | xargs -r redis-cli -p "${REDIS_PORT:-6379}" DEL >/dev/null
    CURRENT_DB= CURRENT_STREAM=
}

printf '\n%-8s %5s %8s %10s %8s %10s %8s %8s %10s %8s %8s %8s %8s %8s %8s\n' build round size "events/s" "p99 ms" "CPU µs/ev" \
    "api µs" "proj µs" "WAL B/ev" "catchup" "api MB" "api pk" "proj pk" "HOT %" "rm/ev"
for ROUND in $(seq 1 "$ROUNDS"); do
    baseline
    for variant in $VARIANTS; do
        for size in $SIZES; do
            service "${variant%%=*}" "${variant#*=}" "$size"
        done
    done
done
echo
echo "CPU µs/ev: busy time of the whole machine per event (pgbench: per row), of which api µs and proj µs"
echo "  were the command API's and the projector's own processes (not their PostgreSQL backends); WAL B/ev likewise;"
echo "size: observations the study held before the measurement;"
echo "catchup: seconds from the end of the load until the projection held the last event;"
echo "api MB / api pk: the command API's resident memory at the end and at its peak during the load (after the prefill); proj pk: the projector's peak, likewise;"
echo "HOT %: updates of read_model.studies and .subjects rows that were HOT; rm/ev: read tables' size / events' size."
