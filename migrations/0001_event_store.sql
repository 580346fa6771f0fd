-- The event store: one append-only table in one global order, plus the small
-- tables the write side keeps beside it (unique claims, idempotency keys and
-- the publishing checkpoint). See ARCHITECTURE.md and docs/event-log.md.

CREATE TABLE events (
    position        bigint      PRIMARY KEY CHECK (position > 0),
    event_id        uuid        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    study_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  smallint    NOT NULL,
    -- `json` (not `jsonb`) keeps the exact bytes that were hashed.
    data            json        NOT NULL,
    actor           text        NOT NULL,
    reason          text,
    correlation_id  text        NOT NULL,
    causation_id    text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    prevhash        bytea       NOT NULL CHECK (length(prevhash) = 32),
    hash            bytea       NOT NULL CHECK (length(hash) = 32),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (aggregate_id, stream_version)
);

CREATE INDEX events_study_id_idx ON events (study_id, position);

-- Recorded data is never overwritten: the database itself refuses to update,
-- delete or truncate an event, whoever asks.
CREATE FUNCTION events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % on events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC;

-- Values that must be unique across aggregates (a study code), claimed in the
-- same transaction as the events that use them.
CREATE TABLE unique_claims (
    scope     text   NOT NULL,
    key       text   NOT NULL,
    owner_id  uuid   NOT NULL,
    position  bigint NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Idempotency keys, scoped to the principal. A row is claimed before the
-- command runs (lease_until guards against a crashed holder) and completed
-- with the answer, in the append transaction for single commands.
CREATE TABLE idempotency_keys (
    principal     text        NOT NULL,
    key           text        NOT NULL,
    request_hash  bytea       NOT NULL,
    status        smallint,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz NOT NULL,
    PRIMARY KEY (principal, key)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- The highest position acknowledged by JetStream; one row.
CREATE TABLE outbox_checkpoint (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    position  bigint  NOT NULL DEFAULT 0
);
INSERT INTO outbox_checkpoint DEFAULT VALUES;
