-- Read models, written only by the projector. Every row keeps the view's
-- state (what the next event is applied to; JSON bytes only the projector
-- reads) and the ready-to-send JSON document with the position of the last
-- event that changed it.

CREATE SCHEMA read_model;

CREATE TABLE read_model.checkpoint (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    position  bigint  NOT NULL DEFAULT 0
);
INSERT INTO read_model.checkpoint DEFAULT VALUES;

CREATE TABLE read_model.studies (
    id        uuid   PRIMARY KEY,
    code      text   NOT NULL UNIQUE,
    state     bytea  NOT NULL,
    body      bytea  NOT NULL,
    position  bigint NOT NULL
);

CREATE TABLE read_model.subjects (
    id        uuid   PRIMARY KEY,
    study_id  uuid   NOT NULL,
    label     text   NOT NULL,
    state     bytea  NOT NULL,
    body      bytea  NOT NULL,
    position  bigint NOT NULL
);
CREATE INDEX studies_by_position ON read_model.studies (position);
-- Pages of a study's subjects, ordered by label.
CREATE INDEX subjects_by_study ON read_model.subjects (study_id, label, id);

CREATE TABLE read_model.observations (
    id           uuid        PRIMARY KEY,
    study_id     uuid        NOT NULL,
    subject_id   uuid        NOT NULL,
    observed_at  timestamptz NOT NULL,
    live         boolean     NOT NULL,
    -- `json` keeps the text as written: cheaper to store than `jsonb`, and
    -- only read when a minimum, maximum or latest value must be found again.
    "values"     json        NOT NULL,
    state        bytea       NOT NULL,
    body         bytea       NOT NULL,
    position     bigint      NOT NULL
);
-- Pages of a subject's and of a study's observations, by (observed_at, id).
CREATE INDEX observations_by_subject ON read_model.observations (subject_id, observed_at, id);
CREATE INDEX observations_by_study ON read_model.observations (study_id, observed_at, id);
-- Documents changed after a position (refilling Redis after an outage).
CREATE INDEX subjects_by_position ON read_model.subjects (position);
CREATE INDEX observations_by_position ON read_model.observations (position);
