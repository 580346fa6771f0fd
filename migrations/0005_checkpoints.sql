-- Signed checkpoints of the Merkle tree (shared/src/checkpoint.rs): the
-- C2SP signed note as it was signed, with its size and root for queries.
-- The signing key never lives here; a copy of every note also goes to
-- JetStream, outside the database.

CREATE TABLE checkpoints (
    size       bigint      NOT NULL CHECK (size >= 0),
    root       bytea       NOT NULL CHECK (length(root) = 32),
    note       text        NOT NULL,
    signed_at  timestamptz NOT NULL,
    PRIMARY KEY (size, signed_at)
);
CREATE INDEX checkpoints_by_time ON checkpoints (signed_at);

GRANT SELECT, INSERT ON checkpoints TO research_command;
GRANT SELECT ON checkpoints TO research_query;
