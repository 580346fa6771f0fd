#!/usr/bin/env bash
# The report an operations team reads: drives the running services
# (scripts/start.sh) with the mixed, open-loop workload of the real data
# (`research-bench mix`), measures the raw baselines in the same run, and
# writes bench-results/<time>/report.json and report.html (research-report):
# per operation throughput and latency percentiles, read-your-writes
# latency, the services' memory, descriptors, cache hit ratio and projection
# lag from Prometheus, database time per statement from pg_stat_statements,
# sessions per service role, and the pipeline's integrity at the end (every
# accepted write in the log once, the read models equal to a replay, the
# hash chain verified); a table against the objectives says pass or fail.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: benches/report.sh [--quick | --soak DURATION] [options]

Drives the services that scripts/start.sh started (and its Prometheus).

  --quick             a run of 2 minutes
  (default)           a run of 10 minutes
  --soak DURATION     a long run (e.g. 1h, 90m, 3600s): memory, descriptors,
                      sessions and latency must stay flat over its second
                      half (the caches fill in the first), or the run fails
  --rate N            operations per second (default 200)
  --mix SPEC          proportions, name=weight,... (see research-bench mix --help)
  --baseline FILE     compare with an earlier report.json; exit 1 when a figure
                      regressed beyond the noise (ratios to the raw baselines)
  --tolerance F       the noise allowed by --baseline (default 0.3: 30 %)
  --out DIR           where to write (default bench-results/<time>)
  -h, --help          this text
USAGE
}

SECONDS_TOTAL=600
RATE=200
MIX=
SOAK=
BASELINE=
TOLERANCE=0.3
OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) SECONDS_TOTAL=120 ;;
        --soak)
            SOAK=1
            SECONDS_TOTAL=$(python3 -c "
import re, sys
m = re.fullmatch(r'(\d+)([smh]?)', sys.argv[1])
if not m: sys.exit('--soak takes a duration such as 1h, 90m or 3600s')
print(int(m[1]) * {'': 1, 's': 1, 'm': 60, 'h': 3600}[m[2]])" "$2")
            shift ;;
        --rate) RATE=$2; shift ;;
        --mix) MIX=$2; shift ;;
        --baseline) BASELINE=$(realpath "$2"); shift ;;
        --tolerance) TOLERANCE=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

source "$(dirname "$0")/common.sh"
PROMETHEUS_ADDR=${PROMETHEUS_ADDR:-127.0.0.1:9090}
for service in "command-api $COMMAND_API_ADDR" "query-api $QUERY_API_ADDR" "projector $PROJECTOR_ADDR"; do
    set -- $service
    curl -fsS "http://$2/readyz" >/dev/null 2>&1 \
        || { echo "[report] $1 does not answer on $2: start the system with scripts/start.sh" >&2; exit 1; }
done
curl -fsS "http://$PROMETHEUS_ADDR/-/ready" >/dev/null 2>&1 \
    || echo "[report] no Prometheus on $PROMETHEUS_ADDR: the services' figures will be missing" >&2

echo "[report] building (release)"
cargo build --release --bins --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
OUT=${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PGPASSWORD=$DB_PASSWORD
PSQL=(psql -h 127.0.0.1 -U "$DB_USER" -v ON_ERROR_STOP=1 -Atq)
RAW_DB=
SAMPLER=
STATIC=
cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    [ -n "$STATIC" ] && kill "$STATIC" 2>/dev/null || true
    [ -n "$RAW_DB" ] && "${PSQL[@]}" -p "$PG_PORT" -d postgres -c "DROP DATABASE IF EXISTS $RAW_DB WITH (FORCE)" || true
}
trap cleanup EXIT

# --- The machine, the versions, the workload --------------------------------
version() { "$@" 2>/dev/null | head -1 || echo unknown; }
python3 - "$OUT/env.json" <<PY
import json, os, platform, sys
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), 'unknown')
mem = next((int(l.split()[1]) * 1024 for l in open('/proc/meminfo') if l.startswith('MemTotal')), 0)
json.dump({
    "generated_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "machine": {"host": platform.node(), "cores": os.cpu_count(), "cpu": cpu, "memory_bytes": mem,
                "kernel": platform.release()},
    "versions": {"commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)",
                 "rustc": "$(version rustc --version)", "postgres": "$(version psql --version)",
                 "nats": "$(version nats-server --version)", "redis": "$(version redis-server --version)",
                 "prometheus": "$(version prometheus --version)"},
    "workload": {"rate": $RATE, "seconds": $SECONDS_TOTAL, "soak": bool("$SOAK"), "mix": "$MIX"},
}, open(sys.argv[1], 'w'), indent=2)
PY

# --- Raw baselines, in the same run ------------------------------------------
echo "[report] raw baselines: pgbench single-row inserts, a static axum handler (10 s each)"
RAW_DB=bench_report_raw_$(date +%s)
"${PSQL[@]}" -p "$PG_PORT" -d postgres -c "CREATE DATABASE $RAW_DB"
"${PSQL[@]}" -p "$PG_PORT" -d "$RAW_DB" -f benches/event-table.sql
pgbench_out=$(pgbench -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -n -c 16 -j 2 -T 10 \
    -f benches/event-insert.sql "$RAW_DB" 2>/dev/null)
"${PSQL[@]}" -p "$PG_PORT" -d postgres -c "DROP DATABASE $RAW_DB WITH (FORCE)"
RAW_DB=
STATIC_ADDR=127.0.0.1:18099
"$BIN/research-bench" static-server --addr "$STATIC_ADDR" --bytes 2048 &
STATIC=$!
wait_ready "http://$STATIC_ADDR/"
echo /v1/studies >"$OUT/static-paths"
static_out=$("$BIN/research-bench" read --target "$STATIC_ADDR" --paths "$OUT/static-paths" \
    --connections 32 --seconds 10 --json)
kill "$STATIC"; STATIC=
rm -f "$OUT/static-paths"
python3 - "$OUT/baselines.json" "$pgbench_out" "$static_out" <<'PY'
import json, re, sys
pg, st = sys.argv[2], json.loads(sys.argv[3])
tps = float(re.search(r'^tps = ([0-9.]+)', pg, re.M)[1])
latency = float(re.search(r'^latency average = ([0-9.]+) ms', pg, re.M)[1])
json.dump({"pgbench_rows_per_s": tps, "pgbench_latency_ms": latency, "pgbench_clients": 16,
           "static_reads_per_s": st["rate"], "static_p50_ms": st["p50_ms"], "static_p99_ms": st["p99_ms"],
           "static_connections": 32}, open(sys.argv[1], 'w'), indent=2)
PY

# --- Database statement times: pg_stat_statements before and after ------------
statements() {
    # calls and total milliseconds of the service database's statements,
    # or nothing where pg_stat_statements is not loaded.
    "${PSQL[@]}" -p "$1" -d postgres -F ' ' -c "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0)
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$DB_NAME')" 2>/dev/null || true
}
primary_before=$(statements "$PG_PORT")
standby_before=$(statements "$REPLICA_PORT")

# Sessions per service role on both servers, every 5 s, while the mix runs.
(
    while sleep 5; do
        now=$(date +%s.%N)
        for port in "$PG_PORT" "$REPLICA_PORT"; do
            "${PSQL[@]}" -p "$port" -d postgres -F $'\t' -c "SELECT usename, count(*) FROM pg_stat_activity
                WHERE datname = '$DB_NAME' GROUP BY usename" 2>/dev/null \
                | awk -v t="$now" -v p="$port" -F '\t' '{print t "\t" $1 "@" p "\t" $2}'
        done
    done >>"$OUT/connections.tsv"
) &
SAMPLER=$!

# --- The mixed workload --------------------------------------------------------
echo "[report] mixed workload: $RATE operations/s for $SECONDS_TOTAL s (progress every 5 s on stderr)"
mix_args=(--api "http://$COMMAND_API_ADDR" --query "http://$QUERY_API_ADDR" --rate "$RATE"
    --seconds "$SECONDS_TOTAL" --out "$OUT/mix.json")
[ -n "$MIX" ] && mix_args+=(--mix "$MIX")
JWT_SECRET=$JWT_SECRET "$BIN/research-bench" mix "${mix_args[@]}"
kill "$SAMPLER" 2>/dev/null || true; SAMPLER=

primary_after=$(statements "$PG_PORT")
standby_after=$(statements "$REPLICA_PORT")
python3 - "$OUT/database.json" "$primary_before" "$primary_after" "$standby_before" "$standby_after" <<'PY'
import json, sys
def delta(before, after):
    if not before.strip() or not after.strip():
        return None
    c0, t0 = map(float, before.split()); c1, t1 = map(float, after.split())
    calls = c1 - c0
    return {"calls": calls, "total_ms": t1 - t0, "mean_ms": (t1 - t0) / calls if calls > 0 else None}
json.dump({"primary": delta(sys.argv[2], sys.argv[3]), "standby": delta(sys.argv[4], sys.argv[5])},
          open(sys.argv[1], 'w'), indent=2)
PY

# --- Integrity at the end -------------------------------------------------------
echo "[report] integrity: projection caught up, replay equal, chain verified"
AUDITOR=$("$BIN/mint-token" --sub report-auditor --roles auditor)
head=$(curl -fsS -H "Authorization: Bearer $AUDITOR" "http://$QUERY_API_ADDR/v1/audit/head" \
    | python3 -c "import json, sys; print(json.load(sys.stdin)['position'])")
catch_up=$(python3 - "$PROJECTOR_ADDR" "$head" <<'PY'
import json, sys, time, urllib.request
addr, head = sys.argv[1], int(sys.argv[2])
start = time.time()
while time.time() - start < 120:
    text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
    at = next((float(l.split()[-1]) for l in text.splitlines() if l.startswith("projector_checkpoint_position ")), 0)
    if at >= head:
        print(round(time.time() - start, 3)); break
    time.sleep(0.05)
else:
    print("null")
PY
)
replay_ok=true
replay_out=$("$BIN/projector" verify-replay 2>&1) || replay_ok=false
chain=$(curl -fsS -H "Authorization: Bearer $AUDITOR" "http://$QUERY_API_ADDR/v1/audit/verify")
python3 - "$OUT/integrity.json" "$catch_up" "$replay_ok" "$replay_out" "$chain" <<'PY'
import json, sys
json.dump({"catch_up_seconds": json.loads(sys.argv[2]),
           "verify_replay": {"ok": sys.argv[3] == "true", "detail": sys.argv[4][-2000:]},
           "chain": json.loads(sys.argv[5])}, open(sys.argv[1], 'w'), indent=2)
PY

# --- The report -------------------------------------------------------------------
report_args=(--dir "$OUT" --prometheus "http://$PROMETHEUS_ADDR" --tolerance "$TOLERANCE")
[ -n "$SOAK" ] && report_args+=(--soak)
[ -n "$BASELINE" ] && report_args+=(--baseline "$BASELINE")
"$BIN/research-report" "${report_args[@]}"
