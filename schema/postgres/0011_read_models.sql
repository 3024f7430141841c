-- Read models of loyalty, churn alerts, historical value, cohorts and CLV/RFM
-- (src/projections/{loyalty,alerts,value,cohorts,clv_scores}.rs). Same
-- conventions as 0010: model_version first, instants in µs UTC, money in
-- integer minor units; REAL columns hold model estimates only.

-- The instant (µs) a version's population tables were last computed as of.
ALTER TABLE projection_versions ADD COLUMN population_as_of_us BIGINT;

-- Loyalty account per customer as of their last event (balance = sum of lots).
CREATE TABLE loyalty_accounts (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    balance BIGINT NOT NULL,
    earned BIGINT NOT NULL,
    consumed BIGINT NOT NULL,
    expired BIGINT NOT NULL,
    qualifying_spend_minor BIGINT NOT NULL,
    conflicts BIGINT NOT NULL,
    as_of_us BIGINT NOT NULL,
    PRIMARY KEY (model_version, customer_id)
);

-- Unexpired lots with points left, consumed first-in first-out.
CREATE TABLE loyalty_lots (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    lot_event_id TEXT NOT NULL,
    source TEXT NOT NULL,
    earned_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL,
    original BIGINT NOT NULL,
    remaining BIGINT NOT NULL,
    PRIMARY KEY (model_version, customer_id, lot_event_id)
);

-- Loyalty tier changes; cause is the event id or rule:spend_window:<order>.
CREATE TABLE loyalty_tier_history (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    from_tier TEXT NOT NULL,
    to_tier TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
);

-- Consumptions that exceeded the balance (floored at zero, reported here).
CREATE TABLE loyalty_conflicts (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    kind TEXT NOT NULL,
    requested BIGINT NOT NULL,
    available BIGINT NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
);

-- Churn early-warning alerts of the per-customer rules; event_ids comma-separated.
CREATE TABLE churn_alerts (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    rule TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    event_ids TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
);

-- High-value customers in the at-risk stage as of the population snapshot.
CREATE TABLE churn_value_alerts (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    as_of_us BIGINT NOT NULL,
    rule TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    value_tier TEXT NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id)
);

-- Historical value per customer and currency (minor units).
CREATE TABLE customer_value (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    gross_minor BIGINT NOT NULL,
    refunded_minor BIGINT NOT NULL,
    net_minor BIGINT NOT NULL,
    orders BIGINT NOT NULL,
    first_order_us BIGINT,
    last_order_us BIGINT,
    PRIMARY KEY (model_version, customer_id, currency)
);

-- Acquisition cohort (YYYY-MM) of each customer; registered = 0 when the cohort is the first order's month.
CREATE TABLE cohort_members (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    cohort_month TEXT NOT NULL,
    registered BIGINT NOT NULL,
    PRIMARY KEY (model_version, customer_id)
);

-- Orders and revenue (reporting currency, minor units) per customer and month.
CREATE TABLE customer_months (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    month TEXT NOT NULL,
    orders BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    PRIMARY KEY (model_version, customer_id, month)
);

-- CLV model outputs and RFM scores as of the population snapshot (calibration end).
CREATE TABLE customer_clv (
    model_version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    as_of_us BIGINT NOT NULL,
    frequency BIGINT NOT NULL,
    recency DOUBLE PRECISION NOT NULL,
    t DOUBLE PRECISION NOT NULL,
    p_alive DOUBLE PRECISION,
    expected_purchases DOUBLE PRECISION,
    expected_avg_spend_minor DOUBLE PRECISION,
    clv_minor BIGINT,
    rfm_r BIGINT,
    rfm_f BIGINT,
    rfm_m BIGINT,
    rfm_total DOUBLE PRECISION,
    rfm_segment TEXT,
    PRIMARY KEY (model_version, customer_id)
);

CREATE INDEX loyalty_accounts_tier ON loyalty_accounts (model_version, tier);
CREATE INDEX churn_alerts_at ON churn_alerts (model_version, at_us);
CREATE INDEX customer_clv_clv ON customer_clv (model_version, clv_minor);
CREATE INDEX customer_clv_segment ON customer_clv (model_version, rfm_segment);
CREATE INDEX cohort_members_month ON cohort_members (model_version, cohort_month);
