#!/bin/sh
# Runs once, when the primary's data directory is created (as the image's
# superuser, which nothing else uses): makes the database owner `research`
# (who applies the migrations), the three service roles that own nothing
# (docs/security.md), a replication role for the standby, and the database.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE research LOGIN PASSWORD '${OWNER_PASSWORD:-research}';
CREATE ROLE research_command LOGIN PASSWORD '${SERVICE_DB_PASSWORD:-research}';
CREATE ROLE research_projector LOGIN PASSWORD '${SERVICE_DB_PASSWORD:-research}';
CREATE ROLE research_query LOGIN PASSWORD '${SERVICE_DB_PASSWORD:-research}';
ALTER ROLE research_query SET default_transaction_read_only = on;
GRANT research_projector TO research;
CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${REPLICATION_PASSWORD:-replicator}';
CREATE DATABASE research OWNER research;
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
