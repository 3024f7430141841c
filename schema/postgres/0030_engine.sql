-- The projection engine at scale (src/projections/state.rs, rebuild.rs).
--
-- Fold states: one row per customer and version, every read model's state
-- together in a binary format (a format byte, then postcard). Replaces the
-- JSON rows of projection_state; versions built before (state_format 0)
-- cannot be maintained and are rebuilt.
DROP TABLE projection_state;
CREATE TABLE customer_state (
    model_version    BIGINT NOT NULL,
    customer_id      TEXT COLLATE "C" NOT NULL,
    -- occurred_at (µs) of the latest event folded.
    last_occurred_us BIGINT NOT NULL,
    -- The next instant a time rule changes the customer without an event
    -- (a stage threshold, a lot expiring, an alert window closing); NULL
    -- when none will.
    due_us           BIGINT,
    state            BYTEA  NOT NULL,
    PRIMARY KEY (model_version, customer_id)
);
CREATE INDEX customer_state_due ON customer_state (model_version, due_us) WHERE due_us IS NOT NULL;

-- state_format: the format of the version's states (0: before this
-- migration). clock_us: the instant the per-customer tables are as of.
-- rebuild_head: the log position a rebuild read through before catching up.
-- watermark_us: the newest occurred_at folded.
ALTER TABLE projection_versions ADD COLUMN state_format INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projection_versions ADD COLUMN clock_us BIGINT;
ALTER TABLE projection_versions ADD COLUMN rebuild_head BIGINT;
ALTER TABLE projection_versions ADD COLUMN watermark_us BIGINT;

-- A rebuild's partitions: ranges of customer streams folded independently.
-- done_through is the last customer whose rows and state are committed, so
-- an interrupted rebuild resumes after it.
CREATE TABLE projection_partitions (
    model_version BIGINT  NOT NULL,
    partition_no  INTEGER NOT NULL,
    first_stream  TEXT COLLATE "C" NOT NULL,
    end_stream    TEXT COLLATE "C",
    done_through  TEXT COLLATE "C",
    finished      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model_version, partition_no)
);

-- Secondary indexes no query uses (every read model is read by customer):
-- each cost a random-order insert per row in every rebuild. Analysts who
-- filter the tables in SQL by these columns can add their own.
DROP INDEX loyalty_accounts_tier;
DROP INDEX churn_alerts_at;
DROP INDEX customer_clv_clv;
DROP INDEX customer_clv_segment;
DROP INDEX cohort_members_month;
