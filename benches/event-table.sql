-- The raw baseline's table: the shape of `events` (without its append-only
-- triggers) and a sequence for its positions; event-insert.sql fills it.
CREATE TABLE bench_events (position bigint PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
  aggregate_type text NOT NULL, aggregate_id uuid NOT NULL, stream_version bigint NOT NULL, study_id uuid NOT NULL,
  event_type text NOT NULL, schema_version smallint NOT NULL, data json NOT NULL, actor text NOT NULL, reason text,
  correlation_id text NOT NULL, causation_id text NOT NULL, recorded_at timestamptz NOT NULL,
  prevhash bytea NOT NULL, hash bytea NOT NULL, UNIQUE (aggregate_id, stream_version));
CREATE INDEX ON bench_events (study_id, position);
CREATE SEQUENCE bench_seq;
