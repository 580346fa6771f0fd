#!/bin/sh
# Makes this container a hot standby of the primary: clones it with
# pg_basebackup on first start (with a replication slot), then runs postgres
# in recovery, streaming the primary's WAL.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -h primary -p 5432; do sleep 1; done
    PGPASSWORD="${REPLICATION_PASSWORD:-replicator}" pg_basebackup -h primary -p 5432 -U replicator \
        -D "$PGDATA" -R -X stream -c fast -C -S standby_1
    chmod 700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c hot_standby_feedback=on
