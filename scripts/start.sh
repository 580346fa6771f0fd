#!/usr/bin/env bash
# Starts the whole system on this machine: the infrastructure, then the
# services (built in release mode) and a Prometheus that scrapes them with
# the project's rules (deploy/prometheus), then loads the real penguin data through
# the command API and prints a token for each role, and the verifier key of
# the development key (made once in .run/) that signs the log's checkpoints.
# Services that already answer are left as they are. Logs and pid files go
# to .run/; stop the services with scripts/stop.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
load_env

scripts/infra.sh
echo "[start] building the services (release)"
cargo build --release --bins --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
mkdir -p .run

wait_ready() {
    local url=$1 name=$2
    for _ in $(seq 1 120); do
        curl -fsS "$url" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "[start] $name did not become ready; see .run/$name.log" >&2
    exit 1
}

start_service() {
    local name=$1 addr=$2
    if curl -fsS "http://$addr/readyz" >/dev/null 2>&1; then
        echo "[start] $name already answers on $addr"
        return
    fi
    echo "[start] starting $name on $addr (log: .run/$name.log)"
    nohup "$BIN/$name" >".run/$name.log" 2>&1 &
    echo $! >".run/$name.pid"
    wait_ready "http://$addr/readyz" "$name"
}

command -v curl >/dev/null 2>&1 || { echo "[start] curl is needed" >&2; exit 1; }
# A development key that signs the log's checkpoints, made once.
if [ -z "${LOG_SIGNING_KEY:-}" ]; then
    export LOG_SIGNING_KEY_FILE=${LOG_SIGNING_KEY_FILE:-$ROOT/.run/log-signing.key}
    if [ ! -f "$LOG_SIGNING_KEY_FILE" ]; then
        echo "[start] making a development checkpoint key in $LOG_SIGNING_KEY_FILE"
        "$BIN/log-key" --name "$LOG_ORIGIN" --out "$LOG_SIGNING_KEY_FILE" >/dev/null
    fi
    VERIFIER_KEY=$("$BIN/log-key" --verifier-of "$LOG_SIGNING_KEY_FILE")
    export LOG_VERIFIER_KEY=${LOG_VERIFIER_KEY:-$VERIFIER_KEY}
fi
start_service command-api "$COMMAND_API_ADDR"
start_service projector "$PROJECTOR_ADDR"
start_service query-api "$QUERY_API_ADDR"

# Prometheus, with the project's scrape configuration pointed at the
# addresses above and its alert rules; its data stays in .run/prometheus.
if curl -fsS "http://$PROMETHEUS_ADDR/-/ready" >/dev/null 2>&1; then
    echo "[start] Prometheus already answers on $PROMETHEUS_ADDR"
else
    echo "[start] starting Prometheus on $PROMETHEUS_ADDR (log: .run/prometheus.log)"
    mkdir -p .run/prometheus
    sed -e "s/127.0.0.1:8081/$COMMAND_API_ADDR/" -e "s/127.0.0.1:8082/$QUERY_API_ADDR/" \
        -e "s/127.0.0.1:8083/$PROJECTOR_ADDR/" deploy/prometheus/prometheus.yml >.run/prometheus/prometheus.yml
    cp deploy/prometheus/rules.yml .run/prometheus/rules.yml
    nohup prometheus --config.file=.run/prometheus/prometheus.yml \
        --storage.tsdb.path=.run/prometheus/data --web.listen-address="$PROMETHEUS_ADDR" \
        >.run/prometheus.log 2>&1 &
    echo $! >.run/prometheus.pid
    wait_ready "http://$PROMETHEUS_ADDR/-/ready" prometheus
fi

mint() { "$BIN/mint-token" --sub "$1" --roles "$2"; }
WRITER=$(mint importer writer)
echo "[start] loading the Palmer penguins through the command API"
"$BIN/research-load" --api "http://$COMMAND_API_ADDR" --token "$WRITER" penguins

cat <<MSG

The command API listens on http://$COMMAND_API_ADDR (OpenAPI: http://$COMMAND_API_ADDR/openapi.json),
the query API on http://$QUERY_API_ADDR (reader token; audit endpoints under /v1/audit/ with an
auditor token; OpenAPI: http://$QUERY_API_ADDR/openapi.json).
Tokens for one day (role: token):
  writer:   $WRITER
  reviewer: $(mint reviewer-1 reviewer)
  reader:   $(mint reader-1 reader)
  auditor:  $(mint auditor-1 auditor)

Prometheus: http://$PROMETHEUS_ADDR (alerts: /alerts; dashboard to import into Grafana:
deploy/grafana/research-records.json; runbook: docs/operations.md).

Checkpoints of the log are signed with the key whose verifier key is:
  ${VERIFIER_KEY:-(the key given in LOG_SIGNING_KEY)}

Try:  curl -s -X POST http://$COMMAND_API_ADDR/v1/studies -H "Authorization: Bearer \$TOKEN" \\
        -H 'content-type: application/json' -d '{"code":"DEMO-1","title":"Demo","principal_investigator":"You","variables":[{"name":"mass_g","kind":"numeric"}]}'
Read: curl -s http://$QUERY_API_ADDR/v1/studies -H "Authorization: Bearer <reader token>"
Stop: scripts/stop.sh
MSG
