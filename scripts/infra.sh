#!/usr/bin/env bash
# Brings up the infrastructure the services need on a Debian machine:
# PostgreSQL 15 on 5432 (primary), a hot standby of it on 5433 (streaming
# replication), Redis on 6379 and NATS with JetStream on 4222.
#
# What already runs is used as it is; what is installed but stopped is
# started; what is missing is installed with apt-get. Running it twice
# changes nothing; `--install-only` installs and starts nothing. Settings
# (with defaults): PG_PORT=5432, REPLICA_PORT=5433,
# REPLICA_DIR=/var/lib/postgresql/<major>/replica, DB_USER=research (the
# owner, who runs migrations), DB_PASSWORD=research, DB_NAME=research,
# SERVICE_DB_PASSWORD=$DB_PASSWORD (of the three service roles
# research_command, research_projector and research_query, which own
# nothing: see docs/security.md), REDIS_PORT=6379, NATS_PORT=4222.
set -euo pipefail

PG_PORT=${PG_PORT:-5432}
REPLICA_PORT=${REPLICA_PORT:-5433}
DB_USER=${DB_USER:-research}
DB_PASSWORD=${DB_PASSWORD:-research}
DB_NAME=${DB_NAME:-research}
SERVICE_DB_PASSWORD=${SERVICE_DB_PASSWORD:-$DB_PASSWORD}
REDIS_PORT=${REDIS_PORT:-6379}
NATS_PORT=${NATS_PORT:-4222}

say() { printf '[infra] %s\n' "$*"; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else as_root runuser -u postgres -- "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 60); do
        port_open "$port" && return 0
        sleep 0.5
    done
    die "$what did not come up on port $port"
}

# A PostgreSQL server may have its port open and still refuse sessions while
# it starts or recovers after a crash: wait until it accepts them (up to
# PG_READY_TIMEOUT seconds, 300 by default), saying so once.
wait_accepting() {
    local port=$1 what=$2 waited=0 limit=${PG_READY_TIMEOUT:-300}
    until pg_isready -q -h 127.0.0.1 -p "$port"; do
        [ $waited -eq 0 ] && say "$what on $port does not accept sessions yet (starting or recovering); waiting up to ${limit}s"
        [ $waited -ge $((limit * 2)) ] && die "$what on $port still refuses sessions after ${limit}s; see its log"
        sleep 0.5
        waited=$((waited + 1))
    done
}

# apt-get waits up to 5 minutes for a lock another apt holds (a machine
# just booted often runs its own updates), and a failed install is tried
# once more after a fresh `apt-get update`, before giving up with the cause.
apt_updated=0
apt_get() { as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
ensure_package() {
    local command=$1 package=$2
    if command -v "$command" >/dev/null 2>&1 || [ -x "$command" ]; then return 0; fi
    say "installing $package"
    if [ $apt_updated -eq 0 ]; then
        apt_get update -qq || say "apt-get update failed; trying the install with the lists at hand"
        apt_updated=1
    fi
    if ! apt_get install -y -qq "$package" >/dev/null; then
        say "installing $package failed; updating the package lists and trying once more"
        apt_get update -qq || true
        apt_get install -y -qq "$package" >/dev/null || die "could not install $package with apt-get (see the messages above)"
    fi
}

# `--install-only`: install what is missing and start nothing
# (scripts/cluster.sh runs servers of its own).
if [ "${1:-}" = --install-only ]; then
    for pair in python3:python3 curl:curl promtool:prometheus pg_ctlcluster:postgresql \
        pg_basebackup:postgresql-client redis-server:redis-server nats-server:nats-server; do
        ensure_package "${pair%%:*}" "${pair#*:}"
    done
    exit 0
fi

# --- Tools the tests use ---------------------------------------------------
ensure_package python3 python3
ensure_package curl curl
# Prometheus (scripts/start.sh runs it) and promtool (the tests check the
# rules with it).
ensure_package promtool prometheus

# --- PostgreSQL primary -------------------------------------------------
ensure_package pg_ctlcluster postgresql
ensure_package pg_basebackup postgresql-client
PG_MAJOR=$(ls /usr/lib/postgresql | sort -n | tail -1)
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
REPLICA_DIR=${REPLICA_DIR:-/var/lib/postgresql/$PG_MAJOR/replica}

if port_open "$PG_PORT"; then
    say "PostgreSQL already runs on $PG_PORT"
else
    if ! ls /etc/postgresql/"$PG_MAJOR"/main >/dev/null 2>&1; then
        say "creating PostgreSQL cluster $PG_MAJOR/main"
        as_root pg_createcluster "$PG_MAJOR" main -p "$PG_PORT"
    fi
    say "starting PostgreSQL $PG_MAJOR/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main start
    wait_port "$PG_PORT" PostgreSQL
fi
wait_accepting "$PG_PORT" PostgreSQL

psql_admin() {
    # Trust on 127.0.0.1 where configured, else peer auth as the postgres user.
    if psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
        psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
    else
        as_postgres psql -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
    fi
}

if [ "$(psql_admin -c "SELECT count(*) FROM pg_roles WHERE rolname = '$DB_USER'")" = 0 ]; then
    say "creating role $DB_USER"
    psql_admin -c "CREATE ROLE $DB_USER LOGIN CREATEDB REPLICATION PASSWORD '$DB_PASSWORD'"
fi
# The services' roles: each owns nothing and gets, from the migrations, only
# what its service needs. The owner is a member of the projector's role so
# that the migrations can hand it the read-model schemas.
for role in research_command research_projector research_query; do
    if [ "$(psql_admin -c "SELECT count(*) FROM pg_roles WHERE rolname = '$role'")" = 0 ]; then
        say "creating role $role"
        psql_admin -c "CREATE ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$SERVICE_DB_PASSWORD'"
    fi
done
psql_admin -c "SET client_min_messages = warning" -c "GRANT research_projector TO $DB_USER" >/dev/null
# The owner drops databases it made (tests, benchmarks) WITH (FORCE), which
# ends the sessions the service roles still hold in them: that needs the
# right to signal their backends (never a superuser's).
psql_admin -c "SET client_min_messages = warning" -c "GRANT pg_signal_backend TO $DB_USER" >/dev/null
psql_admin -c "ALTER ROLE research_query SET default_transaction_read_only = on" >/dev/null
if [ "$(psql_admin -c "SELECT count(*) FROM pg_database WHERE datname = '$DB_NAME'")" = 0 ]; then
    say "creating database $DB_NAME"
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
fi
# The service role may pause and resume the standby's replay: the tests
# prove that reads wait for a lagging replica (granted on the primary, the
# grant replicates). Idempotent.
psql_admin -c "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause(), pg_wal_replay_resume() TO $DB_USER"

# pg_stat_statements, whose per-statement times the benchmark report reads:
# a library loaded at start-up, so enabling it restarts the primary once.
if [ "$(psql_admin -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")" = 1 ]; then
    preload=$(psql_admin -c 'SHOW shared_preload_libraries')
    if [[ ",$preload," != *",pg_stat_statements,"* ]]; then
        say "enabling pg_stat_statements (restarts PostgreSQL $PG_MAJOR/main once)"
        psql_admin -c "ALTER SYSTEM SET shared_preload_libraries = '${preload:+$preload,}pg_stat_statements'" >/dev/null
        as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main restart
        wait_accepting "$PG_PORT" PostgreSQL
    fi
    psql_admin -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
    psql_admin -c "SET client_min_messages = warning" -c "GRANT pg_read_all_stats TO $DB_USER" >/dev/null
fi

# Autovacuum: the read tables' hot rows are rewritten by nearly every event
# and bloat without it (docs/operations.md). A server that runs with it off
# gets it on (a reload, no restart).
if [ "$(psql_admin -c 'SHOW autovacuum')" != on ]; then
    say "turning autovacuum on (the read tables' hot rows need it)"
    psql_admin -c "ALTER SYSTEM SET autovacuum = on" -c "SELECT pg_reload_conf()" >/dev/null
fi

# Streaming replication from 127.0.0.1 for the standby.
HBA=$(psql_admin -c 'SHOW hba_file')
if ! as_root grep -Eq "^host[[:space:]]+replication[[:space:]]+($DB_USER|all)[[:space:]]+127\.0\.0\.1/32" "$HBA"; then
    say "allowing replication connections from 127.0.0.1 in $HBA"
    echo "host replication $DB_USER 127.0.0.1/32 scram-sha-256" | as_root tee -a "$HBA" >/dev/null
    psql_admin -c 'SELECT pg_reload_conf()' >/dev/null
fi

# --- PostgreSQL hot standby ---------------------------------------------
standby_ok() {
    [ "$(PGPASSWORD=$DB_PASSWORD psql -h 127.0.0.1 -p "$REPLICA_PORT" -U "$DB_USER" -d postgres -Atqc \
        'SELECT pg_is_in_recovery()' 2>/dev/null)" = t ]
}

if port_open "$REPLICA_PORT"; then
    wait_accepting "$REPLICA_PORT" "the hot standby"
    standby_ok || die "port $REPLICA_PORT is taken by something that is not a hot standby"
    say "hot standby already runs on $REPLICA_PORT"
    # A standby made before it loaded pg_stat_statements: load it now (the
    # standby is ours when its directory is).
    if as_root test -f "$REPLICA_DIR/standby.signal" && \
        ! as_root grep -q "^shared_preload_libraries.*pg_stat_statements" "$REPLICA_DIR/postgresql.conf"; then
        say "loading pg_stat_statements on the hot standby (restarts it once)"
        echo "shared_preload_libraries = 'pg_stat_statements'" | as_postgres tee -a "$REPLICA_DIR/postgresql.conf" >/dev/null
        as_postgres "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" -l "$REPLICA_DIR/standby.log" -w restart >/dev/null
        wait_accepting "$REPLICA_PORT" "the hot standby"
    fi
else
    if ! as_root test -f "$REPLICA_DIR/standby.signal"; then
        say "creating a hot standby in $REPLICA_DIR (pg_basebackup, streaming replication)"
        as_root rm -rf "$REPLICA_DIR"
        as_root install -d -o postgres -g postgres -m 700 "$REPLICA_DIR"
        slot_exists=$(psql_admin -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'standby_$REPLICA_PORT'")
        slot_args=(-S "standby_$REPLICA_PORT")
        [ "$slot_exists" = 0 ] && slot_args+=(-C)
        as_postgres env PGPASSWORD="$DB_PASSWORD" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" \
            -D "$REPLICA_DIR" -R -X stream -c fast "${slot_args[@]}"
        # Debian keeps configuration outside the data directory: give the
        # standby its own.
        as_postgres tee "$REPLICA_DIR/postgresql.conf" >/dev/null <<CONF
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/var/run/postgresql'
hot_standby = on
hot_standby_feedback = on
max_connections = 200
shared_buffers = 256MB
logging_collector = off
shared_preload_libraries = 'pg_stat_statements'
CONF
        as_postgres tee "$REPLICA_DIR/pg_hba.conf" >/dev/null <<CONF
local all all peer
host all all 127.0.0.1/32 scram-sha-256
host all postgres 127.0.0.1/32 trust
CONF
        as_postgres touch "$REPLICA_DIR/pg_ident.conf"
    fi
    say "starting the hot standby on $REPLICA_PORT"
    as_postgres "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" -l "$REPLICA_DIR/standby.log" -w start >/dev/null
    wait_port "$REPLICA_PORT" "hot standby"
    wait_accepting "$REPLICA_PORT" "the hot standby"
    standby_ok || die "the server on $REPLICA_PORT is not in recovery; see $REPLICA_DIR/standby.log"
fi

# --- Redis --------------------------------------------------------------
ensure_package redis-server redis-server
if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    say "Redis already runs on $REDIS_PORT"
else
    say "starting Redis on $REDIS_PORT"
    as_root install -d -o "$(id -un)" /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/research.log
    wait_port "$REDIS_PORT" Redis
fi

# --- NATS with JetStream ------------------------------------------------
ensure_package nats-server nats-server
if port_open "$NATS_PORT"; then
    say "NATS already runs on $NATS_PORT"
else
    say "starting NATS with JetStream on $NATS_PORT"
    as_root install -d /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
        -a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port "$NATS_PORT" NATS
fi

say "ready: postgres 127.0.0.1:$PG_PORT (standby :$REPLICA_PORT), redis :$REDIS_PORT, nats :$NATS_PORT"
