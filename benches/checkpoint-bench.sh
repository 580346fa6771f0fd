#!/usr/bin/env bash
# The cost of the verifiable log on the write path, in one run: the command
# API recording real weather observations (research-bench write, durable
# appends) with checkpointing off and on (the Merkle tree kept and a
# checkpoint signed every second), alternating for ROUNDS rounds on one
# database (off-on, then on-off, so that a drift of the machine over the
# run weighs on both alike), at 16 and 64 connections; medians compared.
# Then both at the same fixed rate (RATE, default 1000 req/s) for the
# latency tail. Throughput on a disk-bound machine is noisy; each run also
# counts the work per appended event, which is not: the WAL PostgreSQL
# writes (pg_current_wal_lsn) and the command API's CPU time (/proc).
# Settings: SECONDS_PER_RUN (default 10), ROUNDS (default 4), RATE.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-4}
RATE=${RATE:-1000}
bench_setup checkpoint
"$BIN/log-key" --name bench.example/log --out "$WORK/key" >/dev/null

restart() { # off | on
    kill "${PIDS[0]}" 2>/dev/null && wait "${PIDS[0]}" 2>/dev/null || true
    if [ "$1" = on ]; then
        COMMAND_API_ADDR=127.0.0.1:$API_PORT LOG_SIGNING_KEY_FILE="$WORK/key" LOG_ORIGIN=bench.example/log \
            "$BIN/command-api" >>"$WORK/api.log" 2>&1 &
    else
        COMMAND_API_ADDR=127.0.0.1:$API_PORT "$BIN/command-api" >>"$WORK/api.log" 2>&1 &
    fi
    PIDS[0]=$!
    wait_ready "$API/readyz"
}
api_run() {
    "$BIN/research-bench" write --api "$API" --token "$TOKEN" --seconds "$SECONDS_PER_RUN" --json "$@"
}
wal_and_head() {
    "${PSQL[@]}" -d "$DB" -c "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, coalesce(max(position), 0) FROM events" | tr '|' ' '
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/${PIDS[0]}/stat"; }
measured_run() { # research-bench write's JSON, with wal_bytes, events and cpu_ticks of the run
    local before ticks out
    before=$(wal_and_head); ticks=$(cpu_ticks)
    out=$(api_run "$@")
    python3 -c "
import json, sys
run = json.loads(sys.argv[1])
(w0, p0), (w1, p1) = (map(int, x.split()) for x in (sys.argv[2], sys.argv[3]))
run.update(wal_bytes=w1 - w0, events=p1 - p0, cpu_ticks=int(sys.argv[5]) - int(sys.argv[4]))
print(json.dumps(run))" "$out" "$before" "$(wal_and_head)" "$ticks" "$(cpu_ticks)"
}
declare -A runs
for round in $(seq 1 "$ROUNDS"); do
    order="off on"
    [ $((round % 2)) -eq 0 ] && order="on off"
    for mode in $order; do
        restart "$mode"
        for c in 16 64; do
            echo "[bench] round $round, checkpointing $mode, $c connections"
            runs[$mode-$c]+="$(measured_run --connections "$c")"$'\n'
        done
        runs[$mode-rate]+="$(measured_run --connections 64 --rate "$RATE")"$'\n'
    done
done
signed=$("${PSQL[@]}" -d "$DB" -c "SELECT count(*) || ' checkpoints, the newest of ' || max(size) || ' events' FROM checkpoints")
echo "[bench] $signed"

python3 - "$ROUNDS" "$RATE" "${runs[off-16]}" "${runs[on-16]}" "${runs[off-64]}" "${runs[on-64]}" \
    "${runs[off-rate]}" "${runs[on-rate]}" <<'PY'
import json, statistics, sys
rounds, rate = sys.argv[1], sys.argv[2]
parse = lambda text: [json.loads(l) for l in text.splitlines() if l.strip()]
off16, on16, off64, on64, offr, onr = (parse(t) for t in sys.argv[3:9])
med = lambda runs, k: statistics.median(r[k] for r in runs)
each = lambda runs, k, digits: " ".join(f"{r[k]:.{digits}f}" for r in runs)
print(f"\n{'':30} {'off appends/s':>14} {'on appends/s':>14} {'on/off':>8}   runs (off | on)")
for name, off, on in (("16 connections", off16, on16), ("64 connections", off64, on64)):
    print(f"{name:30} {med(off, 'rate'):14.0f} {med(on, 'rate'):14.0f} {med(on, 'rate') / med(off, 'rate'):8.3f}   "
          f"{each(off, 'rate', 0)} | {each(on, 'rate', 0)}")
ticks = int(__import__("os").sysconf("SC_CLK_TCK"))
per = lambda runs, k, scale: statistics.median(r[k] * scale / max(1, r["events"]) for r in runs)
print(f"\nper appended event (median of all runs):  WAL off {per(off16 + off64 + offr, 'wal_bytes', 1):.0f} B, "
      f"on {per(on16 + on64 + onr, 'wal_bytes', 1):.0f} B ({per(on16 + on64 + onr, 'wal_bytes', 1) / per(off16 + off64 + offr, 'wal_bytes', 1):.3f}); "
      f"command API CPU off {per(off16 + off64 + offr, 'cpu_ticks', 1e6 / ticks):.0f} us, "
      f"on {per(on16 + on64 + onr, 'cpu_ticks', 1e6 / ticks):.0f} us ({per(on16 + on64 + onr, 'cpu_ticks', 1) / per(off16 + off64 + offr, 'cpu_ticks', 1):.3f})")
print(f"at {rate} req/s, 64 connections: p50 off {med(offr, 'p50_ms'):.2f} ms, on {med(onr, 'p50_ms'):.2f} ms; "
      f"p99 off {med(offr, 'p99_ms'):.2f} ms, on {med(onr, 'p99_ms'):.2f} ms "
      f"(p99 runs off {each(offr, 'p99_ms', 1)} | on {each(onr, 'p99_ms', 1)})")
PY
