#!/usr/bin/env bash
# Stops the services and the Prometheus started by scripts/start.sh
# (SIGTERM: they finish in-flight work first). The infrastructure keeps
# running.
set -euo pipefail
cd "$(dirname "$0")/.."
for pidfile in .run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    name=$(basename "$pidfile" .pid)
    if kill -0 "$pid" 2>/dev/null; then
        echo "[stop] stopping $name ($pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$pidfile"
done
