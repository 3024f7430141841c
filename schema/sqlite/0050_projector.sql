-- One projector, many readers (src/projections/leadership.rs, live_feed.rs).
--
-- Several servers may share one read-model database; one of them (the
-- projector, holding a file lock beside the database) maintains the active
-- version, the others only read. `epoch` is the fencing token: each new
-- projector increments it, and every batch it commits first checks that the
-- epoch is still its own, so a projector that lost its role can never
-- commit over its successor's work.
CREATE TABLE projector_fence (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    epoch    INTEGER NOT NULL,
    holder   TEXT,
    since_us INTEGER
);
INSERT INTO projector_fence (id, epoch) VALUES (1, 0);

-- Stage changes and alerts as the projector commits them, in commit order,
-- so that every server (not only the projector) can send them to its
-- subscribers. Written in the batch's transaction; pruned after a while.
-- `epoch` is the writer's fencing token (a server skips what it sent itself).
CREATE TABLE live_feed (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch         INTEGER NOT NULL,
    model_version INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    customer_id   TEXT    NOT NULL,
    from_stage    TEXT,
    to_stage      TEXT,
    message       TEXT,
    at_us         INTEGER NOT NULL,
    recorded_us   INTEGER NOT NULL
);
