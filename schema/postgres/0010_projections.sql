-- Read models projected from the event log (see src/projections/).
-- Every read-model table carries model_version: a rebuild writes a fresh
-- version beside the active one and switches the pointer when complete.
-- Instants are microseconds since the Unix epoch, UTC (columns *_us).

-- One row per rebuild. status: building -> active -> retired (or abandoned
-- when a rebuild under other rules superseded it). checkpoint: the last
-- global position whose effects are committed in this version.
CREATE TABLE projection_versions (
    model_version  BIGINT PRIMARY KEY,
    status         TEXT    NOT NULL CHECK (status IN ('building', 'active', 'retired', 'abandoned')),
    rules_id       TEXT COLLATE "C" NOT NULL,
    rules_hash     TEXT COLLATE "C" NOT NULL,
    rules_json     TEXT COLLATE "C" NOT NULL,
    started_at_us  BIGINT  NOT NULL,
    finished_at_us BIGINT,
    checkpoint     BIGINT  NOT NULL,
    events_applied BIGINT  NOT NULL
);
CREATE UNIQUE INDEX projection_versions_one_active ON projection_versions (status) WHERE status = 'active';

-- Per-customer fold state of every projection, so a rebuild resumes and the
-- live runner restarts exactly where it committed.
CREATE TABLE projection_state (
    model_version    BIGINT  NOT NULL,
    projection       TEXT COLLATE "C" NOT NULL,
    customer_id      TEXT COLLATE "C" NOT NULL,
    last_occurred_us BIGINT  NOT NULL,
    state            TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (model_version, projection, customer_id)
);

-- Lifecycle stage as of the customer's last applied event.
CREATE TABLE lifecycle_customers (
    model_version  BIGINT  NOT NULL,
    customer_id    TEXT COLLATE "C" NOT NULL,
    stage          TEXT COLLATE "C" NOT NULL,
    stage_since_us BIGINT  NOT NULL,
    revenue_minor  BIGINT  NOT NULL,
    orders         BIGINT  NOT NULL,
    last_order_us  BIGINT,
    PRIMARY KEY (model_version, customer_id)
);

-- Every stage change: cause is the event id or the time rule that fired.
CREATE TABLE lifecycle_transitions (
    model_version BIGINT  NOT NULL,
    customer_id   TEXT COLLATE "C" NOT NULL,
    seq           BIGINT  NOT NULL,
    from_stage    TEXT,
    to_stage      TEXT COLLATE "C" NOT NULL,
    at_us         BIGINT  NOT NULL,
    cause         TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
);

-- Stage and value tier of every customer as of the newest event applied
-- (the population snapshot tiers need), rewritten after each batch commit
-- of a rebuild's end and of live catch-up.
CREATE TABLE lifecycle_snapshot (
    model_version BIGINT  NOT NULL,
    customer_id   TEXT COLLATE "C" NOT NULL,
    as_of_us      BIGINT  NOT NULL,
    stage         TEXT COLLATE "C" NOT NULL,
    value_tier    TEXT COLLATE "C" NOT NULL,
    revenue_minor BIGINT  NOT NULL,
    PRIMARY KEY (model_version, customer_id)
);
