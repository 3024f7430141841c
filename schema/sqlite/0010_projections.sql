-- Read models projected from the event log (see src/projections/).
-- Every read-model table carries model_version: a rebuild writes a fresh
-- version beside the active one and switches the pointer when complete.
-- Instants are microseconds since the Unix epoch, UTC (columns *_us).

-- One row per rebuild. status: building -> active -> retired (or abandoned
-- when a rebuild under other rules superseded it). checkpoint: the last
-- global position whose effects are committed in this version.
CREATE TABLE projection_versions (
    model_version  INTEGER PRIMARY KEY,
    status         TEXT    NOT NULL CHECK (status IN ('building', 'active', 'retired', 'abandoned')),
    rules_id       TEXT    NOT NULL,
    rules_hash     TEXT    NOT NULL,
    rules_json     TEXT    NOT NULL,
    started_at_us  INTEGER NOT NULL,
    finished_at_us INTEGER,
    checkpoint     INTEGER NOT NULL,
    events_applied INTEGER NOT NULL
);
CREATE UNIQUE INDEX projection_versions_one_active ON projection_versions (status) WHERE status = 'active';

-- Per-customer fold state of every projection, so a rebuild resumes and the
-- live runner restarts exactly where it committed.
CREATE TABLE projection_state (
    model_version    INTEGER NOT NULL,
    projection       TEXT    NOT NULL,
    customer_id      TEXT    NOT NULL,
    last_occurred_us INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    PRIMARY KEY (model_version, projection, customer_id)
) WITHOUT ROWID;

-- Lifecycle stage as of the customer's last applied event.
CREATE TABLE lifecycle_customers (
    model_version  INTEGER NOT NULL,
    customer_id    TEXT    NOT NULL,
    stage          TEXT    NOT NULL,
    stage_since_us INTEGER NOT NULL,
    revenue_minor  INTEGER NOT NULL,
    orders         INTEGER NOT NULL,
    last_order_us  INTEGER,
    PRIMARY KEY (model_version, customer_id)
) WITHOUT ROWID;

-- Every stage change: cause is the event id or the time rule that fired.
CREATE TABLE lifecycle_transitions (
    model_version INTEGER NOT NULL,
    customer_id   TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    from_stage    TEXT,
    to_stage      TEXT    NOT NULL,
    at_us         INTEGER NOT NULL,
    cause         TEXT    NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
) WITHOUT ROWID;

-- Stage and value tier of every customer as of the newest event applied
-- (the population snapshot tiers need), rewritten after each batch commit
-- of a rebuild's end and of live catch-up.
CREATE TABLE lifecycle_snapshot (
    model_version INTEGER NOT NULL,
    customer_id   TEXT    NOT NULL,
    as_of_us      INTEGER NOT NULL,
    stage         TEXT    NOT NULL,
    value_tier    TEXT    NOT NULL,
    revenue_minor INTEGER NOT NULL,
    PRIMARY KEY (model_version, customer_id)
) WITHOUT ROWID;
