#!/usr/bin/env bash
# Audit benchmark, in one run on this machine, over EVENTS events (real NYC
# weather rows in replicate studies, loaded through the command API):
#   raw:     COPY (SELECT … FROM events ORDER BY position) TO STDOUT from the
#            hot standby;
#   export:  GET /v1/audit/events?limit=EVENTS from the query API reading the
#            standby, with the query API's peak resident memory;
#   verify:  research-verify over the exported NDJSON file.
# Settings: EVENTS (default 1000000).
set -euo pipefail
source "$(dirname "$0")/common.sh"
EVENTS=${EVENTS:-1000000}
QUERY_PORT=${QUERY_PORT:-18082}
bench_setup audit
STANDBY=(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U "$DB_USER" -Atq)
load_weather "$EVENTS"
events=$("${PSQL[@]}" -d "$DB" -c "SELECT max(position) FROM events")
echo "[bench] waiting for the standby to replay $events events"
for _ in $(seq 1 600); do
    [ "$("${STANDBY[@]}" -d "$DB" -c "SELECT coalesce(max(position), 0) FROM events" 2>/dev/null)" = "$events" ] && break
    sleep 1
done

seconds() { python3 -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$1"; }
t0=$(date +%s.%N)
"${STANDBY[@]}" -d "$DB" -c "COPY (SELECT position, event_id, aggregate_type, aggregate_id, stream_version, study_id, \
    event_type, schema_version, data, actor, reason, correlation_id, causation_id, recorded_at, prevhash, hash \
    FROM events ORDER BY position) TO STDOUT" >"$WORK/copy.tsv"
copy_s=$(seconds "$t0")

QUERY_API_ADDR=127.0.0.1:$QUERY_PORT REPLICA_DATABASE_URL="$READ_REPLICA_URL" \
    "$BIN/query-api" >"$WORK/query.log" 2>&1 &
QPID=$!
PIDS+=($QPID)
wait_ready "http://127.0.0.1:$QUERY_PORT/readyz"
AUDITOR=$("$BIN/mint-token" --sub auditor --roles auditor)
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$QPID/status")
( peak=0; while kill -0 "$QPID" 2>/dev/null; do
      r=$(awk '/VmRSS/ {print $2}' "/proc/$QPID/status" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$WORK/peak"
      sleep 0.2
  done ) &
SAMPLER=$!
t0=$(date +%s.%N)
curl -fsS -H "Authorization: Bearer $AUDITOR" "http://127.0.0.1:$QUERY_PORT/v1/audit/events?after=0&limit=$events" -o "$WORK/export.ndjson"
export_s=$(seconds "$t0")
kill "$SAMPLER" 2>/dev/null || true
lines=$(wc -l <"$WORK/export.ndjson")

t0=$(date +%s.%N)
"$BIN/research-verify" --quiet --file "$WORK/export.ndjson"
verify_s=$(seconds "$t0")

python3 - "$events" "$copy_s" "$export_s" "$verify_s" "$lines" "$rss_before" "$(cat "$WORK/peak" 2>/dev/null || echo 0)" \
    "$(stat -c %s "$WORK/copy.tsv")" "$(stat -c %s "$WORK/export.ndjson")" <<'PY'
import sys
n, copy_s, export_s, verify_s, lines, rss0, peak, copy_b, export_b = sys.argv[1:]
n, lines = int(n), int(lines)
copy_r, export_r, verify_r = n / float(copy_s), lines / float(export_s), lines / float(verify_s)
print(f"\n{'':40} {'events/s':>12}")
print(f"{'raw COPY from the standby':40} {copy_r:12.0f}   ({int(copy_b) / 1e6:.0f} MB)")
print(f"{'audit export (HTTP NDJSON)':40} {export_r:12.0f}   ({export_r / copy_r:.2f} x COPY, {int(export_b) / 1e6:.0f} MB, {lines} lines)")
print(f"{'offline verification of the export':40} {verify_r:12.0f}   ({verify_r / export_r:.2f} x export)")
print(f"query-api resident memory: {int(rss0) / 1024:.0f} MB before, {int(peak) / 1024:.0f} MB at most during the export")
PY
