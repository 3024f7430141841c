-- Read models of loyalty, churn alerts, historical value, cohorts and CLV/RFM
-- (src/projections/{loyalty,alerts,value,cohorts,clv_scores}.rs). Same
-- conventions as 0010: model_version first, instants in µs UTC, money in
-- integer minor units; REAL columns hold model estimates only.

-- The instant (µs) a version's population tables were last computed as of.
ALTER TABLE projection_versions ADD COLUMN population_as_of_us INTEGER;

-- Loyalty account per customer as of their last event (balance = sum of lots).
CREATE TABLE loyalty_accounts (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    balance INTEGER NOT NULL,
    earned INTEGER NOT NULL,
    consumed INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    qualifying_spend_minor INTEGER NOT NULL,
    conflicts INTEGER NOT NULL,
    as_of_us INTEGER NOT NULL,
    PRIMARY KEY (model_version, customer_id)
) WITHOUT ROWID;

-- Unexpired lots with points left, consumed first-in first-out.
CREATE TABLE loyalty_lots (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    lot_event_id TEXT NOT NULL,
    source TEXT NOT NULL,
    earned_at_us INTEGER NOT NULL,
    expires_at_us INTEGER NOT NULL,
    original INTEGER NOT NULL,
    remaining INTEGER NOT NULL,
    PRIMARY KEY (model_version, customer_id, lot_event_id)
) WITHOUT ROWID;

-- Loyalty tier changes; cause is the event id or rule:spend_window:<order>.
CREATE TABLE loyalty_tier_history (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    from_tier TEXT NOT NULL,
    to_tier TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
) WITHOUT ROWID;

-- Consumptions that exceeded the balance (floored at zero, reported here).
CREATE TABLE loyalty_conflicts (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    requested INTEGER NOT NULL,
    available INTEGER NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
) WITHOUT ROWID;

-- Churn early-warning alerts of the per-customer rules; event_ids comma-separated.
CREATE TABLE churn_alerts (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    rule TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    event_ids TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
) WITHOUT ROWID;

-- High-value customers in the at-risk stage as of the population snapshot.
CREATE TABLE churn_value_alerts (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    as_of_us INTEGER NOT NULL,
    rule TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    value_tier TEXT NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id)
) WITHOUT ROWID;

-- Historical value per customer and currency (minor units).
CREATE TABLE customer_value (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    gross_minor INTEGER NOT NULL,
    refunded_minor INTEGER NOT NULL,
    net_minor INTEGER NOT NULL,
    orders INTEGER NOT NULL,
    first_order_us INTEGER,
    last_order_us INTEGER,
    PRIMARY KEY (model_version, customer_id, currency)
) WITHOUT ROWID;

-- Acquisition cohort (YYYY-MM) of each customer; registered = 0 when the cohort is the first order's month.
CREATE TABLE cohort_members (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    cohort_month TEXT NOT NULL,
    registered INTEGER NOT NULL,
    PRIMARY KEY (model_version, customer_id)
) WITHOUT ROWID;

-- Orders and revenue (reporting currency, minor units) per customer and month.
CREATE TABLE customer_months (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    month TEXT NOT NULL,
    orders INTEGER NOT NULL,
    revenue_minor INTEGER NOT NULL,
    PRIMARY KEY (model_version, customer_id, month)
) WITHOUT ROWID;

-- CLV model outputs and RFM scores as of the population snapshot (calibration end).
CREATE TABLE customer_clv (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    as_of_us INTEGER NOT NULL,
    frequency INTEGER NOT NULL,
    recency REAL NOT NULL,
    t REAL NOT NULL,
    p_alive REAL,
    expected_purchases REAL,
    expected_avg_spend_minor REAL,
    clv_minor INTEGER,
    rfm_r INTEGER,
    rfm_f INTEGER,
    rfm_m INTEGER,
    rfm_total REAL,
    rfm_segment TEXT,
    PRIMARY KEY (model_version, customer_id)
) WITHOUT ROWID;

CREATE INDEX loyalty_accounts_tier ON loyalty_accounts (model_version, tier);
CREATE INDEX churn_alerts_at ON churn_alerts (model_version, at_us);
CREATE INDEX customer_clv_clv ON customer_clv (model_version, clv_minor);
CREATE INDEX customer_clv_segment ON customer_clv (model_version, rfm_segment);
CREATE INDEX cohort_members_month ON cohort_members (model_version, cohort_month);
