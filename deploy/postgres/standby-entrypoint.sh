#!/bin/sh
# Makes this container a hot standby of the primary (PRIMARY_HOST, default
# `primary`): clones it with pg_basebackup on first start (with the
# replication slot SLOT_NAME, default standby_1), then runs postgres in
# recovery, streaming the primary's WAL.
set -e
PRIMARY_HOST=${PRIMARY_HOST:-primary}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -h "$PRIMARY_HOST" -p 5432; do sleep 1; done
    PGPASSWORD="${REPLICATION_PASSWORD:-replicator}" pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator \
        -D "$PGDATA" -R -X stream -c fast -C -S "${SLOT_NAME:-standby_1}"
    chmod 700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c hot_standby_feedback=on
