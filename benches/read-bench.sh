#!/usr/bin/env bash
# Read benchmark, in one run on this machine, over the real data (the three
# penguin studies and replicate NYC weather studies, loaded through the
# command API, projected, warmed into Redis, read from the hot standby):
#   query:   research-bench read of real study, subject and observation
#            documents from the query API (cache hits after a warm-up pass),
#            CONNECTIONS keep-alive connections, closed loop;
#   static:  the same generator against a minimal axum handler answering a
#            fixed body of the documents' mean size (the ceiling);
#            query and static alternate for ROUNDS rounds and the medians
#            are compared (the machine is noisy); the generator runs on one
#            thread, the lightest a client gets on two cores;
#   redis:   redis-benchmark GET of a value of that size, same connections;
#   half:    the query API at half its maximum rate (open loop): p50, p99;
#   export:  the largest study's NDJSON export, plain and compressed, with
#            the query API's resident memory during it;
#   memory:  the query API's resident memory over a run of LONG seconds at
#            half rate (0 skips it; 600 is ten minutes).
# Settings: EVENTS (weather events, default 150000), CONNECTIONS (32),
# SECONDS_PER_STEP (10), ROUNDS (3), LONG (0).
set -euo pipefail
source "$(dirname "$0")/common.sh"
EVENTS=${EVENTS:-150000}
CONNECTIONS=${CONNECTIONS:-32}
SECONDS_PER_STEP=${SECONDS_PER_STEP:-10}
LONG=${LONG:-0}
ROUNDS=${ROUNDS:-3}
export TOKIO_WORKER_THREADS=1
QUERY_PORT=${QUERY_PORT:-18082}
STATIC_PORT=${STATIC_PORT:-18090}
PROJECTOR_PORT=${PROJECTOR_PORT:-18083}
bench_setup read
PREFIX=benchread$RUN_ID
REDIS=redis://127.0.0.1:$REDIS_PORT
STANDBY=(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U "$DB_USER" -Atq -d "$DB")
redis_cleanup() {
    redis-cli -p "$REDIS_PORT" --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" DEL >/dev/null || true
    redis-cli -p "$REDIS_PORT" DEL "key:__rand_int__" >/dev/null || true
    bench_cleanup
}
trap redis_cleanup EXIT

"$BIN/research-load" --api "$API" --token "$TOKEN" penguins 2>/dev/null | tail -1
load_weather "$EVENTS"
head=$("${PSQL[@]}" -d "$DB" -c "SELECT max(position) FROM events")
REDIS_URL=$REDIS REDIS_PREFIX=$PREFIX PROJECTOR_ADDR=127.0.0.1:$PROJECTOR_PORT "$BIN/projector" >"$WORK/projector.log" 2>&1 &
PIDS+=($!)
echo "[bench] projecting $head events; waiting for the standby to replay them"
for _ in $(seq 1 900); do
    [ "$("${STANDBY[@]}" -c "SELECT position FROM read_model.checkpoint" 2>/dev/null)" = "$head" ] && break
    sleep 1
done

QUERY_API_ADDR=127.0.0.1:$QUERY_PORT REDIS_URL=$REDIS REDIS_PREFIX=$PREFIX \
    REPLICA_DATABASE_URL="$READ_REPLICA_URL" \
    "$BIN/query-api" >"$WORK/query.log" 2>&1 &
QPID=$!
PIDS+=($QPID)
wait_ready "http://127.0.0.1:$QUERY_PORT/readyz"
READER=$("$BIN/mint-token" --sub bench-reader --roles reader)
rss() { awk '/VmRSS/ {print $2}' "/proc/$QPID/status"; }
rss_start=$(rss)

# The mix: every study, 500 subjects and 5000 observations, shuffled.
"${STANDBY[@]}" -F ' ' -c "
    (SELECT '/v1/studies/' || id, octet_length(body) FROM read_model.studies)
    UNION ALL (SELECT '/v1/subjects/' || id, octet_length(body) FROM read_model.subjects ORDER BY random() LIMIT 500)
    UNION ALL (SELECT '/v1/observations/' || id, octet_length(body) FROM read_model.observations ORDER BY random() LIMIT 5000)" \
    | shuf >"$WORK/mix"
cut -d' ' -f1 "$WORK/mix" >"$WORK/paths"
docs=$(wc -l <"$WORK/paths")
mean=$(awk '{s += $2} END {printf "%d", s / NR}' "$WORK/mix")
echo "[bench] $docs documents, mean size $mean bytes"

lookups() {
    curl -fsS "http://127.0.0.1:$QUERY_PORT/metrics" \
        | awk -v tier="$1" '/^query_cache_lookups_total/ && $0 ~ "tier=\"" tier "\"" {s += $2} END {printf "%d", s}'
}
memory_hits() {
    curl -fsS "http://127.0.0.1:$QUERY_PORT/metrics" \
        | awk '/^query_cache_lookups_total/ && /tier="memory"/ && /result="hit"/ {s += $2} END {printf "%d", s}'
}
read_load() { # target, seconds, extra args…
    local target=$1 seconds=$2
    shift 2
    "$BIN/research-bench" read --target "$target" --paths "$WORK/paths" --connections "$CONNECTIONS" \
        --seconds "$seconds" --json "$@"
}

echo "[bench] warm-up pass"
read_load "127.0.0.1:$QUERY_PORT" 3 --token "$READER" >/dev/null
"$BIN/research-bench" static-server --addr "127.0.0.1:$STATIC_PORT" --bytes "$mean" &
PIDS+=($!)
wait_ready "http://127.0.0.1:$STATIC_PORT/"
hits0=$(memory_hits); all0=$(lookups memory)
queries=(); statics=()
for round in $(seq 1 "$ROUNDS"); do
    echo "[bench] round $round: query API, then the static handler, $CONNECTIONS connections, closed loop"
    queries+=("$(read_load "127.0.0.1:$QUERY_PORT" "$SECONDS_PER_STEP" --token "$READER")")
    statics+=("$(read_load "127.0.0.1:$STATIC_PORT" "$SECONDS_PER_STEP")")
done
hits1=$(memory_hits); all1=$(lookups memory)
rss_peak=$(rss)
median() { printf '%s\n' "$@" | python3 -c "import json, sys; runs = sorted((json.loads(l) for l in sys.stdin), key=lambda r: r['rate']); print(json.dumps(runs[len(runs) // 2]))"; }
query=$(median "${queries[@]}")
static=$(median "${statics[@]}")
echo "[bench] query API runs: $(printf '%s ' "${queries[@]}" | grep -o '"rate":[0-9.]*' | cut -d: -f2 | cut -d. -f1 | tr '\n' ' ')"
echo "[bench] static runs:    $(printf '%s ' "${statics[@]}" | grep -o '"rate":[0-9.]*' | cut -d: -f2 | cut -d. -f1 | tr '\n' ' ')"

echo "[bench] redis-benchmark GET, $CONNECTIONS connections"
requests=$(python3 -c "print(int($(field "$query" rate) * $SECONDS_PER_STEP))")
redis_rate=$(redis-benchmark -p "$REDIS_PORT" -c "$CONNECTIONS" -n "$requests" -d "$mean" -t set,get --csv 2>/dev/null \
    | awk -F'","' '/^"GET"/ {print $2}')

half=$(python3 -c "print($(field "$query" rate) / 2)")
echo "[bench] query API at half its maximum ($half req/s), open loop"
halfrun=$(read_load "127.0.0.1:$QUERY_PORT" "$SECONDS_PER_STEP" --token "$READER" --rate "$half")

echo "[bench] export of the largest study"
largest=$("${STANDBY[@]}" -c "SELECT study_id FROM read_model.observations GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
lines=$("${STANDBY[@]}" -c "SELECT count(*) FROM read_model.observations WHERE study_id = '$largest'")
( peak=0; while kill -0 "$QPID" 2>/dev/null; do
      r=$(rss 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$WORK/export-peak"
      sleep 0.1
  done ) &
SAMPLER=$!
export_size() {
    curl -fsS -H "Authorization: Bearer $READER" ${1:+-H "Accept-Encoding: $1"} \
        "http://127.0.0.1:$QUERY_PORT/v1/studies/$largest/observations.ndjson" -o "$WORK/export" -w '%{size_download} %{time_total}'
}
plain=$(export_size "")
zstd=$(export_size zstd); br=$(export_size br); gzip=$(export_size gzip)
kill "$SAMPLER" 2>/dev/null || true

series=""
if [ "$LONG" -gt 0 ]; then
    echo "[bench] $LONG s at half rate, resident memory every 10 s"
    read_load "127.0.0.1:$QUERY_PORT" "$LONG" --token "$READER" --rate "$half" >"$WORK/long" &
    LOADER=$!
    while kill -0 "$LOADER" 2>/dev/null; do series="$series $(rss)"; sleep 10; done
    wait "$LOADER"
fi

python3 - "$query" "$static" "$redis_rate" "$halfrun" "$hits0" "$hits1" "$all0" "$all1" "$rss_start" "$rss_peak" \
    "$(cat "$WORK/export-peak" 2>/dev/null || echo 0)" "$lines" "$plain" "$zstd" "$br" "$gzip" "$mean" "$series" <<'PY'
import json, sys
(q, s, redis_rate, h, hits0, hits1, all0, all1, rss0, rss_peak, export_peak, lines,
 plain, zstd, br, gzip, mean, series) = sys.argv[1:]
q, s, h = json.loads(q), json.loads(s), json.loads(h)
redis_rate = float(redis_rate)
hit_ratio = (int(hits1) - int(hits0)) / max(1, int(all1) - int(all0))
print(f"\n{'':44} {'req/s':>10}")
print(f"{'static axum handler (' + mean + ' B body, median)':44} {s['rate']:10.0f}")
print(f"{'redis-benchmark GET (' + mean + ' B value)':44} {redis_rate:10.0f}")
print(f"{'query API, cache hits (median)':44} {q['rate']:10.0f}   ({q['rate'] / s['rate']:.2f} x static, "
      f"{q['rate'] / redis_rate:.2f} x redis-benchmark, {q['errors']} errors)")
print(f"query API closed loop: p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms")
print(f"half rate ({h['rate']:.0f} req/s): p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms, {h['errors']} errors")
print(f"memory-tier hit ratio during the closed-loop runs: {hit_ratio * 100:.2f} %")
size = lambda r: int(r.split()[0])
secs = lambda r: float(r.split()[1])
print(f"export of the largest study ({lines} observations): {size(plain) / 1e6:.1f} MB in {secs(plain):.2f} s; "
      f"zstd {100 * (1 - size(zstd) / size(plain)):.0f} % smaller, br {100 * (1 - size(br) / size(plain)):.0f} %, "
      f"gzip {100 * (1 - size(gzip) / size(plain)):.0f} %")
print(f"query-api resident memory: {int(rss0) / 1024:.0f} MB at start, {int(rss_peak) / 1024:.0f} MB after the load, "
      f"{int(export_peak) / 1024:.0f} MB at most during the exports")
if series.strip():
    mb = [int(x) / 1024 for x in series.split()]
    print(f"resident memory over the long run (MB, every 10 s): first {mb[0]:.0f}, max {max(mb):.0f}, last {mb[-1]:.0f}")
PY
