-- The event log. One row per event; never updated or deleted.
-- position: global order, 1, 2, 3, ... assigned in commit order (SQLite has
--   a single writer, so commit order is position order).
-- occurred_at / recorded_at: microseconds since the Unix epoch, UTC.
-- metadata / payload: canonical JSON text, exactly as hashed.
-- hash: SHA-256 chained to the previous event of the same stream.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    metadata       TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    hash           BLOB    NOT NULL,
    UNIQUE (stream_id, version)
);

-- The head of every stream: its version and last hash, for chaining and
-- optimistic concurrency without scanning the stream.
CREATE TABLE streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    head_hash BLOB    NOT NULL
) WITHOUT ROWID;

-- Immutability: the ledger never rewrites history. Direct edits of the file
-- must first drop these triggers, and `journey verify` then finds them.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable');
END;
