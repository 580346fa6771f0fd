#!/usr/bin/env bash
# Proof benchmark, in one run on this machine, over a log of EVENTS events
# (real NYC weather rows in replicate studies, loaded through a command API
# that keeps the Merkle tree and signs checkpoints), projected and read from
# the hot standby by a query API given the verifier key:
#   documents: research-bench read of observation documents (cache hits
#              after a warm-up pass): the baseline;
#   proofs:    inclusion proofs of random events against the newest
#              checkpoint's tree size;
#   receipts:  receipts of random observations (their events, a proof each);
#   each closed loop on CONNECTIONS connections, ROUNDS rounds alternating
#   (medians compared), then proofs and receipts at half their maximum rate
#   (open loop) for the latency goal. The first pass over the proofs, with
#   the tile cache empty, is reported too.
#   rebuild:   the tree rebuilt from the events in the database (tiles
#              deleted), against sha256sum over the events' bytes as COPY
#              gives them, and research-verify rebuilding it from an NDJSON
#              export (every event's hash recomputed, checked against the
#              signed checkpoint) against sha256sum over the export.
# Settings: EVENTS (default 1000000), CONNECTIONS (32), SECONDS_PER_STEP
# (10), ROUNDS (3).
set -euo pipefail
source "$(dirname "$0")/common.sh"
EVENTS=${EVENTS:-1000000}
CONNECTIONS=${CONNECTIONS:-32}
SECONDS_PER_STEP=${SECONDS_PER_STEP:-10}
ROUNDS=${ROUNDS:-3}
QUERY_PORT=${QUERY_PORT:-18082}
PROJECTOR_PORT=${PROJECTOR_PORT:-18083}

# The checkpoint key, made before the command API starts.
cargo build --release --bins --quiet
KEYDIR=$(mktemp -d)
"${CARGO_TARGET_DIR:-$ROOT/target}/release/log-key" --name bench.example/log --out "$KEYDIR/key" >/dev/null
export LOG_SIGNING_KEY_FILE=$KEYDIR/key LOG_ORIGIN=bench.example/log
bench_setup proof
VERIFIER_KEY=$("$BIN/log-key" --verifier-of "$KEYDIR/key")
proof_cleanup() { rm -rf "$KEYDIR"; bench_cleanup; }
trap proof_cleanup EXIT
STANDBY=(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U "$DB_USER" -Atq -d "$DB")

load_weather "$EVENTS"
head=$("${PSQL[@]}" -d "$DB" -c "SELECT coalesce(max(position), 0) FROM events")
[ "$head" -gt 0 ] || { echo "[bench] the log is empty after loading; see $WORK/api.log" >&2; tail -20 "$WORK/api.log" >&2; exit 1; }
PROJECTOR_ADDR=127.0.0.1:$PROJECTOR_PORT "$BIN/projector" >"$WORK/projector.log" 2>&1 &
PIDS+=($!)
echo "[bench] projecting $head events; waiting for a checkpoint of them and for the standby"
for _ in $(seq 1 1800); do
    [ "$("${STANDBY[@]}" -c "SELECT position FROM read_model.checkpoint" 2>/dev/null)" = "$head" ] \
        && [ "$("${STANDBY[@]}" -c "SELECT coalesce(max(size), 0) >= $head FROM checkpoints" 2>/dev/null)" = t ] && break
    sleep 1
done
size=$("${STANDBY[@]}" -c "SELECT max(size) FROM checkpoints")
echo "[bench] the newest checkpoint signs $size events"

export TOKIO_WORKER_THREADS=1
QUERY_API_ADDR=127.0.0.1:$QUERY_PORT REPLICA_DATABASE_URL="$READ_REPLICA_URL" LOG_VERIFIER_KEY="$VERIFIER_KEY" \
    QUERY_API_TILE_CACHE_BYTES=$((128 * 1024 * 1024)) "$BIN/query-api" >"$WORK/query.log" 2>&1 &
QPID=$!
PIDS+=($QPID)
wait_ready "http://127.0.0.1:$QUERY_PORT/readyz"
READER=$("$BIN/mint-token" --sub bench-reader --roles reader)
AUDITOR=$("$BIN/mint-token" --sub bench-auditor --roles auditor)

"${STANDBY[@]}" -c "SELECT id FROM read_model.observations ORDER BY random() LIMIT 5000" >"$WORK/observations"
sed 's|^|/v1/observations/|' "$WORK/observations" >"$WORK/documents"
sed 's|^\(.*\)$|/v1/audit/observations/\1/receipt|' "$WORK/observations" >"$WORK/receipts"
python3 -c "
import random, sys
size = int(sys.argv[1])
for _ in range(20000):
    print(f'/v1/audit/proof/inclusion?position={random.randint(1, size)}&tree_size={size}')" "$size" >"$WORK/proofs"

load() { # paths, token, seconds, extra args…
    local paths=$1 token=$2 seconds=$3
    shift 3
    "$BIN/research-bench" read --target "127.0.0.1:$QUERY_PORT" --paths "$WORK/$paths" --token "$token" \
        --connections "$CONNECTIONS" --seconds "$seconds" --json "$@"
}

echo "[bench] first pass over the proofs, tile cache empty"
cold=$(load proofs "$AUDITOR" 5)
echo "[bench] warm-up of the documents and receipts"
load documents "$READER" 3 >/dev/null
load receipts "$AUDITOR" 3 >/dev/null
docs=(); proofs=(); receipts=()
for round in $(seq 1 "$ROUNDS"); do
    echo "[bench] round $round: documents, proofs, receipts; $CONNECTIONS connections, closed loop"
    docs+=("$(load documents "$READER" "$SECONDS_PER_STEP")")
    proofs+=("$(load proofs "$AUDITOR" "$SECONDS_PER_STEP")")
    receipts+=("$(load receipts "$AUDITOR" "$SECONDS_PER_STEP")")
done
median() { printf '%s\n' "$@" | python3 -c "import json, sys; runs = sorted((json.loads(l) for l in sys.stdin), key=lambda r: r['rate']); print(json.dumps(runs[len(runs) // 2]))"; }
doc=$(median "${docs[@]}"); proof=$(median "${proofs[@]}"); receipt=$(median "${receipts[@]}")
echo "[bench] at half the maximum rate, open loop"
doc_half=$(load documents "$READER" "$SECONDS_PER_STEP" --rate "$(python3 -c "print($(field "$doc" rate) / 2)")")
proof_half=$(load proofs "$AUDITOR" "$SECONDS_PER_STEP" --rate "$(python3 -c "print($(field "$proof" rate) / 2)")")
receipt_half=$(load receipts "$AUDITOR" "$SECONDS_PER_STEP" --rate "$(python3 -c "print($(field "$receipt" rate) / 2)")")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$QPID/status")

echo "[bench] rebuilding the tree from the events"
kill "${PIDS[0]}" && wait "${PIDS[0]}" 2>/dev/null || true # the command API keeps the tree
"${PSQL[@]}" -d "$DB" -c "COPY (SELECT position, event_id, aggregate_type, aggregate_id, stream_version, study_id, \
    event_type, schema_version, data, actor, reason, correlation_id, causation_id, recorded_at, prevhash, hash \
    FROM events ORDER BY position) TO STDOUT" >"$WORK/copy.tsv"
seconds() { python3 -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$1"; }
t0=$(date +%s.%N); sha256sum "$WORK/copy.tsv" >/dev/null; sha_copy_s=$(seconds "$t0")
"${PSQL[@]}" -d "$DB" -c "DELETE FROM merkle_tiles; UPDATE merkle_tree SET size = 0"
t0=$(date +%s.%N)
"$BIN/research-bench" rebuild-tree --database-url "$COMMAND_API_DATABASE_URL" >/dev/null
rebuild_s=$(seconds "$t0")
curl -fsS -H "Authorization: Bearer $AUDITOR" "http://127.0.0.1:$QUERY_PORT/v1/audit/events?after=0&limit=$head" -o "$WORK/export.ndjson"
curl -fsS -H "Authorization: Bearer $AUDITOR" "http://127.0.0.1:$QUERY_PORT/v1/audit/checkpoint" -o "$WORK/checkpoint"
t0=$(date +%s.%N); sha256sum "$WORK/export.ndjson" >/dev/null; sha_export_s=$(seconds "$t0")
t0=$(date +%s.%N)
"$BIN/research-verify" --quiet --file "$WORK/export.ndjson" --key "$VERIFIER_KEY" --checkpoint "$WORK/checkpoint"
verify_s=$(seconds "$t0")

python3 - "$doc" "$proof" "$receipt" "$proof_half" "$receipt_half" "$cold" "$doc_half" "$rss" "$head" "$size" \
    "$sha_copy_s" "$rebuild_s" "$sha_export_s" "$verify_s" "$(stat -c %s "$WORK/copy.tsv")" "$(stat -c %s "$WORK/export.ndjson")" <<'PY'
import json, sys
d, p, r, ph, rh, cold, dh = (json.loads(x) for x in sys.argv[1:8])
rss, head, size = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
sha_copy_s, rebuild_s, sha_export_s, verify_s = (float(x) for x in sys.argv[11:15])
copy_b, export_b = int(sys.argv[15]), int(sys.argv[16])
print(f"\nlog of {head} events, newest checkpoint {size}")
print(f"{'':46} {'req/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8}")
def row(name, x):
    print(f"{name:46} {x['rate']:10.0f} {x['rate'] / d['rate']:7.2f} {x['p50_ms']:8.2f} {x['p99_ms']:8.2f}   {x['errors']} errors")
row("observation documents, cache hits (baseline)", d)
row("inclusion proofs", p)
row("receipts", r)
row("documents at half rate (open loop)", dh)
row("inclusion proofs at half rate (open loop)", ph)
row("receipts at half rate (open loop)", rh)
row("inclusion proofs, first pass (tiles cold)", cold)
print(f"query-api resident memory after the runs: {rss / 1024:.0f} MB")
sha_copy = head / sha_copy_s
sha_export = head / sha_export_s
print(f"\n{'':62} {'events/s':>10} {'ratio':>7}")
print(f"{'sha256sum over the events as COPY gives them (' + str(copy_b // 1_000_000) + ' MB)':62} {sha_copy:10.0f}")
print(f"{'tree rebuilt in PostgreSQL from the events':62} {head / rebuild_s:10.0f} {head / rebuild_s / sha_copy:7.2f}")
print(f"{'sha256sum over the NDJSON export (' + str(export_b // 1_000_000) + ' MB)':62} {sha_export:10.0f}")
print(f"{'research-verify: chain and tree from the export, checkpoint':62} {head / verify_s:10.0f} {head / verify_s / sha_export:7.2f}")
PY
