-- Per-customer data keys for the personal fields sealed inside events
-- (crypto-shredding). Kept OUTSIDE the events: erasing a customer deletes
-- the key row (with PRAGMA secure_delete=ON and a WAL checkpoint), after
-- which the sealed fields in the immutable events can never be read again.
-- key: 32 random bytes (XChaCha20-Poly1305). created_at: microseconds, UTC.
CREATE TABLE customer_keys (
    customer_id TEXT    PRIMARY KEY,
    key         BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Customers whose key was destroyed: sealing for them is refused, and their
-- sealed fields read as erased rather than as "key missing".
CREATE TABLE erased_customers (
    customer_id TEXT    PRIMARY KEY,
    erased_at   INTEGER NOT NULL
);
