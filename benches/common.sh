# Shared by the benchmark scripts: a release build, a database and a stream
# of their own (removed on exit), and a command API on them.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
load_env
API_PORT=${API_PORT:-18081}

# bench_setup NAME: builds, creates bench_NAME_<time> and its stream, starts
# the command API on API_PORT; sets BIN, DB, WORK, PSQL, TOKEN, API and
# exports each service's database URL (its own role), the owner's for the
# migrations, NATS_STREAM and NATS_SUBJECT_PREFIX for the binaries.
bench_setup() {
    local name=$1
    scripts/infra.sh >/dev/null
    echo "[bench] building (release)"
    cargo build --release --bins --quiet
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
    RUN_ID=$(date +%s)
    DB=bench_${name}_$RUN_ID
    STREAM=BENCH_${name^^}_$RUN_ID
    export PGPASSWORD=$DB_PASSWORD
    PSQL=(psql -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -v ON_ERROR_STOP=1 -Atq)
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
    WORK=$(mktemp -d)
    PIDS=()
    trap bench_cleanup EXIT
    export DATABASE_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB"
    export MIGRATION_DATABASE_URL=$DATABASE_URL
    local service_password=${SERVICE_DB_PASSWORD:-$DB_PASSWORD}
    export COMMAND_API_DATABASE_URL="postgres://research_command:$service_password@127.0.0.1:$PG_PORT/$DB"
    export PROJECTOR_DATABASE_URL="postgres://research_projector:$service_password@127.0.0.1:$PG_PORT/$DB"
    export QUERY_API_DATABASE_URL="postgres://research_query:$service_password@127.0.0.1:$PG_PORT/$DB"
    READ_REPLICA_URL="postgres://research_query:$service_password@127.0.0.1:$REPLICA_PORT/$DB"
    export NATS_STREAM=$STREAM NATS_SUBJECT_PREFIX=bench$name$RUN_ID RUST_LOG=warn REDIS_URL=
    API="http://127.0.0.1:$API_PORT"
    COMMAND_API_ADDR=127.0.0.1:$API_PORT "$BIN/command-api" >"$WORK/api.log" 2>&1 &
    PIDS+=($!)
    wait_ready "$API/readyz"
    TOKEN=$("$BIN/mint-token" --sub bench --roles writer)
}

bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    "$BIN/research-bench" drop-stream "$STREAM" || true
    rm -rf "$WORK"
}

# field JSON NAME: a field of research-bench's --json answer (numbers with
# at most two decimals).
field() {
    python3 -c "import json, sys; v = json.loads(sys.argv[1])[sys.argv[2]]; print(round(v, 2) if isinstance(v, float) else v)" "$1" "$2"
}

wait_ready() {
    for _ in $(seq 1 60); do curl -fsS "$1" >/dev/null 2>&1 && return; sleep 0.5; done
    echo "[bench] $1 did not become ready" >&2
    exit 1
}

# load_weather EVENTS: replicate weather studies until about EVENTS events.
load_weather() {
    local replicates=$(( ($1 + 26118) / 26119 ))
    echo "[bench] loading $replicates replicate weather studies through the command API"
    "$BIN/research-load" --api "$API" --token "$TOKEN" weather --replicates "$replicates" 2>/dev/null | tail -1
}
