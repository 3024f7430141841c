-- One round trip per group commit: the group's planned rows go to the
-- server in one call, which takes the global position lock, checks that
-- every stream it grows is still where the plan found it, numbers the rows
-- after the last committed position and writes events, stream heads, the
-- global head and the notification. The call is its own transaction, so
-- the lock is held from this function's first statement to its commit.
--
-- The client plans without any lock (stream heads read beforehand, hashes
-- chained in Rust); the head check makes that safe: every writer of
-- `streams` holds the `ledger_head` lock, and each statement of a PL/pgSQL
-- function under READ COMMITTED reads a fresh snapshot, so the check after
-- the lock sees every group committed before. Positions are not hashed,
-- so the server may number the rows: groups in flight together commit in
-- whatever order they reach the lock, each gapless.
--
-- SQLSTATE JL409: a stream moved since planning (plan again).
-- SQLSTATE JL001: an event id is already stored (a retry: plan again with
--                 the stored events in hand).
CREATE FUNCTION journey_append_group(
    p_event_ids       UUID[],
    p_stream_ids      TEXT[],
    p_versions        BIGINT[],
    p_event_types     TEXT[],
    p_schema_versions INTEGER[],
    p_occurred_at     TIMESTAMPTZ[],
    p_metadata        TEXT[],
    p_payloads        TEXT[],
    p_hashes          BYTEA[],
    p_recorded_at     TIMESTAMPTZ,
    p_head_streams    TEXT[],
    p_prior_versions  BIGINT[],
    p_head_versions   BIGINT[],
    p_head_hashes     BYTEA[],
    p_channel         TEXT
) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    base    BIGINT;
    written BIGINT;
    total   BIGINT := cardinality(p_event_ids);
BEGIN
    SELECT position INTO base FROM ledger_head WHERE id FOR UPDATE;
    -- A scalar subquery per stream: an index probe in every plan (a join
    -- with `streams` can get a generic plan that scans it).
    IF EXISTS (
        SELECT 1 FROM unnest(p_head_streams, p_prior_versions) AS g(stream_id, prior)
        WHERE coalesce((SELECT s.version FROM streams s WHERE s.stream_id = g.stream_id), 0)
              <> g.prior
    ) THEN
        RAISE EXCEPTION 'a stream of this group was appended to since it was planned'
            USING ERRCODE = 'JL409';
    END IF;
    INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version,
                        occurred_at, recorded_at, metadata, payload, hash)
    SELECT base + u.n, u.e, u.s, u.v, u.t, u.sv, u.o, p_recorded_at, u.m, u.pl, u.h
    FROM unnest(p_event_ids, p_stream_ids, p_versions, p_event_types, p_schema_versions,
                p_occurred_at, p_metadata, p_payloads, p_hashes)
         WITH ORDINALITY AS u(e, s, v, t, sv, o, m, pl, h, n)
    ON CONFLICT (event_id) DO NOTHING;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written <> total THEN
        RAISE EXCEPTION 'an event id of this group is already stored' USING ERRCODE = 'JL001';
    END IF;
    INSERT INTO streams (stream_id, version, head_hash)
    SELECT * FROM unnest(p_head_streams, p_head_versions, p_head_hashes)
    ON CONFLICT (stream_id) DO UPDATE
        SET version = excluded.version, head_hash = excluded.head_hash;
    UPDATE ledger_head SET position = base + total WHERE id;
    -- Delivered at commit only: a group rolled back announces nothing.
    PERFORM pg_notify(p_channel, (base + total)::TEXT);
    RETURN base;
END
$$;
