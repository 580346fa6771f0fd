-- The Merkle tree of the log (RFC 9162 hashing, leaf i = the `hash` of the
-- event at position i + 1; shared/src/merkle.rs): the hashes of every eighth
-- level of the tree in tiles of at most 256 (the C2SP tlog-tiles layout),
-- and the size they cover. Derived from `events` alone, so it can always be
-- rebuilt from them; extended by one writer at a time (the row lock on
-- `merkle_tree`), a batch of leaves and the new size in one transaction.

CREATE TABLE merkle_tiles (
    level   smallint NOT NULL CHECK (level >= 0),
    n       bigint   NOT NULL CHECK (n >= 0),
    hashes  bytea    NOT NULL CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0),
    PRIMARY KEY (level, n)
);

CREATE TABLE merkle_tree (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    size  bigint  NOT NULL DEFAULT 0 CHECK (size >= 0)
);
INSERT INTO merkle_tree DEFAULT VALUES;

GRANT SELECT, INSERT, UPDATE ON merkle_tiles, merkle_tree TO research_command;
GRANT SELECT ON merkle_tiles, merkle_tree TO research_query;
