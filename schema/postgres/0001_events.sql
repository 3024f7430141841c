-- The event log. One row per event; never updated or deleted.
-- position: global order, 1, 2, 3, ... assigned under the ledger_head row
--   lock, so positions are gapless and visible in commit order (a plain
--   sequence would leave gaps and let a later position commit first, making
--   tailing readers skip events).
-- metadata / payload: canonical JSON text, exactly as hashed (text, not
--   jsonb, because jsonb reorders keys and would break the hash chain).
CREATE TABLE events (
    position       BIGINT      PRIMARY KEY,
    event_id       UUID        NOT NULL UNIQUE,
    stream_id      TEXT        COLLATE "C" NOT NULL,
    version        BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    metadata       TEXT        NOT NULL,
    payload        TEXT        NOT NULL,
    hash           BYTEA       NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE TABLE streams (
    stream_id TEXT   COLLATE "C" PRIMARY KEY,
    version   BIGINT NOT NULL,
    head_hash BYTEA  NOT NULL
);

-- One row holding the last committed position. Appenders lock it for the
-- length of their transaction.
CREATE TABLE ledger_head (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    position BIGINT  NOT NULL
);
INSERT INTO ledger_head (id, position) VALUES (TRUE, 0);

CREATE FUNCTION events_are_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
