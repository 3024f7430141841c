-- Value tiers as of past month ends, kept as the ranking's two boundary
-- customers, so a customer's tier as of any earlier instant is their own
-- revenue compared with two keys instead of a replay of the whole log.
--
-- Tiers rank customers by revenue (descending, ties by id): the high tier
-- is a prefix of that ranking and the mid tier the next stretch, so the
-- last customer of each (their revenue and id) decides every customer's
-- tier. A row is computed on first use from customer_months and dropped
-- when an event that occurred at or before its instant is folded later.
CREATE TABLE value_tier_bounds (
    model_version      INTEGER NOT NULL,
    as_of_us           INTEGER NOT NULL,
    high_revenue_minor INTEGER,
    high_customer_id   TEXT,
    mid_revenue_minor  INTEGER,
    mid_customer_id    TEXT,
    PRIMARY KEY (model_version, as_of_us)
) WITHOUT ROWID;
