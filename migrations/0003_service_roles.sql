-- Least privilege. The role that runs these migrations owns the database,
-- the event store and its trigger function; the services connect as roles
-- that own none of it (docs/security.md):
--   research_command    appends events (SELECT, INSERT) and keeps its own
--                       small tables (claims, idempotency answers, the
--                       outbox checkpoint);
--   research_projector  reads events and owns the read-model schemas, which
--                       it rebuilds beside the live ones and switches;
--   research_query      reads events and read models, nothing else.
-- None of them may update, delete or truncate an event, disable or drop a
-- trigger, or replace the trigger function: those need ownership of `events`
-- or of the function. The roles are made by scripts/infra.sh (or
-- deploy/postgres/primary-init.sh) before the first migration.

DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO research_command, research_projector, research_query',
                   current_database());
    -- A rebuild creates `read_model_next` beside the live schema.
    EXECUTE format('GRANT CREATE ON DATABASE %I TO research_projector', current_database());
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON FUNCTION events_are_append_only() FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO research_command, research_projector, research_query;

GRANT SELECT, INSERT ON events TO research_command;
GRANT SELECT, INSERT ON unique_claims TO research_command;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO research_command;
GRANT SELECT, UPDATE ON outbox_checkpoint TO research_command;

GRANT SELECT ON events TO research_projector, research_query;

-- The read models are the projector's: derived data, rebuilt from the log.
ALTER SCHEMA read_model OWNER TO research_projector;
ALTER TABLE read_model.checkpoint OWNER TO research_projector;
ALTER TABLE read_model.studies OWNER TO research_projector;
ALTER TABLE read_model.subjects OWNER TO research_projector;
ALTER TABLE read_model.observations OWNER TO research_projector;
GRANT USAGE ON SCHEMA read_model TO research_query;
GRANT SELECT ON ALL TABLES IN SCHEMA read_model TO research_query;
-- Schemas and tables a rebuild makes are readable by the query API too.
ALTER DEFAULT PRIVILEGES FOR ROLE research_projector GRANT USAGE ON SCHEMAS TO research_query;
ALTER DEFAULT PRIVILEGES FOR ROLE research_projector GRANT SELECT ON TABLES TO research_query;
