-- The heads of the streams a group grows, read in one round trip by a
-- statement the appender prepares once.
--
-- A prepared `... WHERE stream_id = ANY($1)` keeps the generic plan it was
-- given while `streams` was small: a sequential scan, chosen rightly on a
-- table of a few rows and kept when it holds millions (autovacuum may be
-- off, so no ANALYZE invalidates the plan; seen: 2.8k events/s at 290k
-- streams). Sent unprepared instead, it costs a second round trip per
-- group (parse and describe, then execute). Dynamic SQL gets both right:
-- the call is prepared once, and `EXECUTE` plans the read afresh on every
-- call against the table's current size.
CREATE FUNCTION journey_stream_heads(p_streams TEXT[])
RETURNS TABLE (stream_id TEXT, version BIGINT, head_hash BYTEA)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT stream_id, version, head_hash FROM streams WHERE stream_id = ANY($1)'
        USING p_streams;
END
$$;
