-- Per-customer data keys for the personal fields sealed inside events
-- (crypto-shredding). Kept OUTSIDE the events: erasing a customer deletes
-- the key row (then VACUUMs the table), after which the sealed fields in the
-- immutable events can never be read again. Base backups and archived WAL
-- taken before the erasure still hold the key until they expire.
CREATE TABLE customer_keys (
    customer_id TEXT        COLLATE "C" PRIMARY KEY,
    key         BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Customers whose key was destroyed: sealing for them is refused, and their
-- sealed fields read as erased rather than as "key missing".
CREATE TABLE erased_customers (
    customer_id TEXT        COLLATE "C" PRIMARY KEY,
    erased_at   TIMESTAMPTZ NOT NULL
);
