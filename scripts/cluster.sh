#!/usr/bin/env bash
# The scaled-out system on one machine, every component more than once, each
# a real process on its own port:
#   nats-1..3          a NATS JetStream cluster (RESEARCH_EVENTS kept 3 times)
#   postgres-primary   PostgreSQL, with two hot standbys fed by streaming
#   postgres-standby-1..2  replication
#   redis              Redis
#   command-api-1..2   (one publisher and one checkpointer among them, elected)
#   projector-1..2     (one leads, by a PostgreSQL lock; the other takes over)
#   query-api-1..3     (1 and 3 prefer standby 1, 2 prefers standby 2; each
#                       fails over to the other)
#
# Usage: scripts/cluster.sh up|status|down
#        scripts/cluster.sh kill|stop|start|freeze|thaw COMPONENT
#        scripts/cluster.sh pause-replay|resume-replay postgres-standby-N
#   up       starts what is not running (installing what is missing), waits
#            until every service is ready, then prints the status
#   status   one line per component: `<component> <url> <up|down>`
#   down     stops everything `up` started and removes its directory; nothing
#            else is touched
#   kill     kill -9 (a crash); `stop` is SIGTERM (a clean stop);
#   start    starts one component again
#   freeze   SIGSTOP: the process holds its sockets and answers nothing, which
#            is how a partitioned node looks to its peers; `thaw` heals it
#   pause-replay / resume-replay   a standby that stops replaying (falls behind)
#
# Settings: CLUSTER_DIR (.run/cluster: data, logs, pid files),
# CLUSTER_PORT_OFFSET (0; added to every port below), CLUSTER_BIN (the
# directory of the service binaries; default: a release build of this
# checkout), JWT_SECRET (as in .env.example).
# Ports: nats 14222-14224 (routes 16222-16224, monitoring 18222-18224),
# postgres 15432 (standbys 15433, 15434), redis 16379, command APIs 18081-18082,
# projectors 18071-18072, query APIs 18091-18093.
set -euo pipefail
source "$(dirname "$0")/common.sh"
load_env

DIR=${CLUSTER_DIR:-$ROOT/.run/cluster}
OFF=${CLUSTER_PORT_OFFSET:-0}
PG_MAJOR=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1 || true)
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
DB=research

say() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
port() { echo $(($1 + OFF)); }
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

COMPONENTS=(nats-1 nats-2 nats-3 postgres-primary postgres-standby-1 postgres-standby-2 redis
    command-api-1 command-api-2 projector-1 projector-2 query-api-1 query-api-2 query-api-3)

# The number at the end of a component's name.
nth() { echo "${1##*-}"; }

url_of() {
    local c=$1
    case $c in
        nats-*) echo "nats://127.0.0.1:$(port $((14221 + $(nth "$c"))))" ;;
        postgres-primary) echo "postgres://127.0.0.1:$(port 15432)/$DB" ;;
        postgres-standby-*) echo "postgres://127.0.0.1:$(port $((15432 + $(nth "$c"))))/$DB" ;;
        redis) echo "redis://127.0.0.1:$(port 16379)" ;;
        command-api-*) echo "http://127.0.0.1:$(port $((18080 + $(nth "$c"))))" ;;
        projector-*) echo "http://127.0.0.1:$(port $((18070 + $(nth "$c"))))" ;;
        query-api-*) echo "http://127.0.0.1:$(port $((18090 + $(nth "$c"))))" ;;
        *) die "no component $c (one of: ${COMPONENTS[*]})" ;;
    esac
}

hostport() { local u=${1#*://}; echo "${u%%/*}"; }
pg_port() { local hp; hp=$(hostport "$(url_of "$1")"); echo "${hp##*:}"; }
pg_data() { echo "$DIR/$1"; }

is_up() {
    local c=$1 url
    url=$(url_of "$c")
    case $c in
        nats-*) curl -fsS -m 2 "http://127.0.0.1:$(port $((18221 + $(nth "$c"))))/healthz" >/dev/null 2>&1 ;;
        postgres-*) pg_isready -q -t 2 -h 127.0.0.1 -p "$(pg_port "$c")" ;;
        redis) redis-cli -h 127.0.0.1 -p "$(port 16379)" ping 2>/dev/null | grep -q PONG ;;
        *) curl -fsS -m 2 "$url/livez" >/dev/null 2>&1 ;;
    esac
}

pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }

nats_urls() {
    local out=() i
    for i in 1 2 3; do out+=("$(url_of nats-$i)"); done
    (IFS=,; echo "${out[*]}")
}

role_url() { # role, component
    echo "postgres://$1:research@$(hostport "$(url_of "$2")")/$DB"
}

# --- starting one component ----------------------------------------------

start_nats() {
    local c=$1 i routes=() j
    i=$(nth "$c")
    for j in 1 2 3; do [ "$j" = "$i" ] || routes+=("nats-route://127.0.0.1:$(port $((16221 + j)))"); done
    mkdir -p "$DIR/$c"
    cat >"$DIR/$c.conf" <<CONF
server_name: $c
listen: 127.0.0.1:$(port $((14221 + i)))
http: 127.0.0.1:$(port $((18221 + i)))
jetstream { store_dir: "$DIR/$c" }
cluster {
  name: research
  listen: 127.0.0.1:$(port $((16221 + i)))
  routes: [ $(IFS=,; echo "${routes[*]}") ]
}
CONF
    nohup nats-server -c "$DIR/$c.conf" >"$DIR/$c.log" 2>&1 &
    echo $! >"$DIR/$c.pid"
}

pg_conf() { # data directory, port
    as_postgres tee -a "$1/postgresql.auto.conf" >/dev/null <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
max_connections = 200
shared_buffers = 128MB
hot_standby = on
hot_standby_feedback = on
wal_level = replica
max_wal_senders = 10
CONF
}

start_postgres() {
    local c=$1 data
    data=$(pg_data "$c")
    if [ ! -f "$data/PG_VERSION" ]; then
        if [ "$c" = postgres-primary ]; then
            say "creating the primary in $data"
            as_postgres "$PG_BIN/initdb" -D "$data" -U research --auth=trust -E UTF8 >/dev/null
            pg_conf "$data" "$(pg_port "$c")"
        else
            say "creating $c in $data (pg_basebackup from the primary)"
            as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$(pg_port postgres-primary)" -U research \
                -D "$data" -R -X stream -c fast
            pg_conf "$data" "$(pg_port "$c")"
        fi
    fi
    # After a kill -9 of the postmaster its backends take a moment to go:
    # until they have, the shared memory is still in use and start refuses.
    local tries=0
    until as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$DIR/$c.log" -w start >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ $tries -lt 20 ] || die "$c did not start; see $DIR/$c.log"
        sleep 0.5
    done
    as_postgres head -1 "$data/postmaster.pid" >"$DIR/$c.pid"
}

setup_primary() {
    local psql=(psql -h 127.0.0.1 -p "$(pg_port postgres-primary)" -U research -d postgres -Atq -v ON_ERROR_STOP=1)
    local role
    for role in research_command research_projector research_query; do
        if [ "$("${psql[@]}" -c "SELECT count(*) FROM pg_roles WHERE rolname = '$role'")" = 0 ]; then
            "${psql[@]}" -c "CREATE ROLE $role LOGIN PASSWORD 'research'"
        fi
    done
    "${psql[@]}" -c "ALTER ROLE research_query SET default_transaction_read_only = on"
    if [ "$("${psql[@]}" -c "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" = 0 ]; then
        "${psql[@]}" -c "CREATE DATABASE $DB OWNER research"
    fi
}

start_redis() {
    mkdir -p "$DIR/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$(port 16379)" --save "" --appendonly no \
        --dir "$DIR/redis" --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid"
}

start_service() {
    local c=$1 bin=${1%-*} env=()
    local addr
    addr=$(hostport "$(url_of "$c")")
    # Every database setting names this cluster's servers, so that nothing
    # from .env or the caller's environment points a service elsewhere; each
    # service may apply the migrations (they are serialised and idempotent).
    env+=(NATS_URL="$(nats_urls)" NATS_STREAM_REPLICAS=3 REDIS_URL="$(url_of redis)"
        MIGRATION_DATABASE_URL="$(role_url research postgres-primary)"
        RUST_LOG="${RUST_LOG:-info,sqlx=warn}")
    case $bin in
        command-api)
            env+=(COMMAND_API_ADDR="$addr"
                COMMAND_API_DATABASE_URL="$(role_url research_command postgres-primary)"
                LOG_SIGNING_KEY_FILE="$DIR/log-signing.key" LOG_SIGNING_KEY=)
            ;;
        projector)
            env+=(PROJECTOR_ADDR="$addr" PROJECTOR_DATABASE_URL="$(role_url research_projector postgres-primary)")
            ;;
        query-api)
            local first=1 second=2
            [ "$(nth "$c")" = 2 ] && { first=2; second=1; }
            env+=(QUERY_API_ADDR="$addr"
                REPLICA_DATABASE_URL="$(role_url research_query postgres-standby-$first),$(role_url research_query postgres-standby-$second)"
                QUERY_API_DATABASE_URL="$(role_url research_query postgres-primary)"
                LOG_VERIFIER_KEY="$("$BIN/log-key" --verifier-of "$DIR/log-signing.key")")
            ;;
    esac
    env "${env[@]}" nohup "$BIN/$bin" >>"$DIR/$c.log" 2>&1 &
    echo $! >"$DIR/$c.pid"
}

start_one() {
    local c=$1
    if is_up "$c"; then return 0; fi
    case $c in
        nats-*) start_nats "$c" ;;
        postgres-*) start_postgres "$c" ;;
        redis) start_redis ;;
        *) start_service "$c" ;;
    esac
}

wait_up() {
    local c=$1 what=${2:-up}
    for _ in $(seq 1 240); do
        if [ "$what" = ready ]; then
            curl -fsS -m 2 "$(url_of "$c")/readyz" >/dev/null 2>&1 && return 0
        else
            is_up "$c" && return 0
        fi
        sleep 0.25
    done
    if [ "$what" = ready ]; then
        echo "[cluster] $c's /readyz: $(curl -sS -m 2 "$(url_of "$c")/readyz" 2>&1)" >&2
    fi
    echo "[cluster] the last lines of $DIR/$c.log:" >&2
    tail -n 30 "$DIR/$c.log" >&2 2>/dev/null || true
    die "$c did not come $what within 60 s; see $DIR/$c.log"
}

binaries() {
    if [ -n "${CLUSTER_BIN:-}" ]; then
        BIN=$CLUSTER_BIN
    else
        say "building the services (release)"
        cargo build --release --bins --quiet
        BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
    fi
    for b in command-api projector query-api log-key; do
        [ -x "$BIN/$b" ] || die "no $BIN/$b"
    done
}

up() {
    scripts/infra.sh --install-only
    binaries
    mkdir -p "$DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
    [ -f "$DIR/log-signing.key" ] || "$BIN/log-key" --name research-records.cluster/log --out "$DIR/log-signing.key" >/dev/null
    local c
    for c in nats-1 nats-2 nats-3; do start_one "$c"; done
    for c in nats-1 nats-2 nats-3; do wait_up "$c"; done
    start_one postgres-primary
    wait_up postgres-primary
    setup_primary
    for c in postgres-standby-1 postgres-standby-2; do start_one "$c"; wait_up "$c"; done
    start_one redis
    wait_up redis
    # The first command API applies the migrations and creates the
    # replicated streams before the others look for them.
    start_one command-api-1
    wait_up command-api-1 ready
    for c in command-api-2 projector-1 projector-2 query-api-1 query-api-2 query-api-3; do start_one "$c"; done
    for c in command-api-2 projector-1 projector-2 query-api-1 query-api-2 query-api-3; do wait_up "$c" ready; done
    status
}

status() {
    local c state
    for c in "${COMPONENTS[@]}"; do
        state=down
        is_up "$c" && state=up
        echo "$c $(url_of "$c") $state"
    done
}

signal() { # signal, component
    local c=$2 pid
    url_of "$c" >/dev/null
    pid=$(pid_of "$c")
    [ -n "$pid" ] || die "$c was not started here"
    kill "-$1" "$pid" 2>/dev/null || true
}

stop_one() {
    local c=$1 pid
    case $c in
        postgres-*)
            [ -f "$(pg_data "$c")/postmaster.pid" ] &&
                as_postgres "$PG_BIN/pg_ctl" -D "$(pg_data "$c")" -m immediate -w stop >/dev/null 2>&1
            ;;
        *)
            pid=$(pid_of "$c")
            if [ -n "$pid" ]; then
                kill -CONT "$pid" 2>/dev/null || true
                kill -KILL "$pid" 2>/dev/null || true
            fi
            ;;
    esac
    rm -f "$DIR/$c.pid"
}

down() {
    [ -d "$DIR" ] || { say "nothing to stop in $DIR"; return 0; }
    local c
    for c in "${COMPONENTS[@]}"; do stop_one "$c"; done
    rm -rf "$DIR"
    say "stopped everything and removed $DIR"
}

replay() { # pause|resume, standby
    case $2 in postgres-standby-*) ;; *) die "$2 is not a standby" ;; esac
    psql -h 127.0.0.1 -p "$(pg_port "$2")" -U research -d postgres -Atq -c "SELECT pg_wal_replay_$1()" >/dev/null
}

case ${1:-} in
    up) up ;;
    status) status ;;
    down) down ;;
    kill) signal KILL "${2:?a component}" ;;
    stop) signal TERM "${2:?a component}" ;;
    freeze) signal STOP "${2:?a component}" ;;
    thaw) signal CONT "${2:?a component}" ;;
    start)
        binaries >/dev/null
        start_one "${2:?a component}"
        wait_up "$2"
        ;;
    pause-replay) replay pause "${2:?a standby}" ;;
    resume-replay) replay resume "${2:?a standby}" ;;
    -h|--help|help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
