-- Events an ingestion source holds back before recording them
-- (src/import/held.rs): a `Checkout Started` becomes `CartAbandoned` only if
-- no order of the customer arrives before `release_us`. Kept beside the
-- events so that a restart loses none; released events keep their id, so
-- several servers releasing the same row store it once. A settled or
-- released row keeps `done_us` for a week, so that a resent message is not
-- held again.
-- Instants are microseconds, UTC.
CREATE TABLE ingest_held_events (
    event_id    TEXT    PRIMARY KEY,
    customer_id TEXT    NOT NULL,
    occurred_us INTEGER NOT NULL,
    release_us  INTEGER NOT NULL,
    event_type  TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    done_us     INTEGER
);
CREATE INDEX ingest_held_events_release ON ingest_held_events (release_us) WHERE done_us IS NULL;
CREATE INDEX ingest_held_events_customer ON ingest_held_events (customer_id, occurred_us);
