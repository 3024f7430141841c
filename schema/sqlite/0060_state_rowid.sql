-- Fold states in a rowid table (src/projections/state.rs).
--
-- As a WITHOUT ROWID table, customer_state kept its rows in an index
-- B-tree, where a row longer than about 1,000 bytes (on 4 KiB pages)
-- spills into an overflow page of its own: on CDNOW master 8 % of the
-- states did, and their 4,143 overflow pages held 4.9 MB of state in 17 MB
-- of file. A rowid table keeps rows of up to ~4,000 bytes on its leaf
-- pages, appends them in insertion order (full pages in a rebuild, whatever
-- the order customers are written in), and finds them through the unique
-- index on (model_version, customer_id).
CREATE TABLE customer_state_rowid (
    model_version    INTEGER NOT NULL,
    customer_id      TEXT    NOT NULL,
    last_occurred_us INTEGER NOT NULL,
    due_us           INTEGER,
    state            BLOB    NOT NULL,
    UNIQUE (model_version, customer_id)
);
INSERT INTO customer_state_rowid (model_version, customer_id, last_occurred_us, due_us, state)
    SELECT model_version, customer_id, last_occurred_us, due_us, state
    FROM customer_state ORDER BY model_version, customer_id;
DROP TABLE customer_state;
ALTER TABLE customer_state_rowid RENAME TO customer_state;
CREATE INDEX customer_state_due ON customer_state (model_version, due_us) WHERE due_us IS NOT NULL;
