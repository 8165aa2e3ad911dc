-- The common append as one plain INSERT: the batch right after version $8 (0: no stream yet),
-- which must be the stream's last version.
--
-- $1 stream type, $2 stream id, $3..$7 the batch as parallel arrays (ids, types, schema
-- versions, payloads, metadata), $8 the version expected.
--
-- It answers only when nothing unusual happened. The row at version $8 must exist (unless $8 is
-- 0) and gives the earliest recording time; a stream already past $8, or a stored event id,
-- fails the insert on a unique key, and a stream short of $8 inserts nothing. In those cases
-- the caller runs `append.sql`, which tells a conflict from a re-sent batch. Why a second
-- statement: without the expectation's CASE, the stream-head lookup by ORDER BY and the summary
-- over the inserted rows, PostgreSQL spends about a sixth less per append (docs/BENCHMARKS.md,
-- W1).
INSERT INTO {schema}.events
    (stream_type, stream_id, stream_version, event_id, event_type, schema_version,
     payload, metadata, recorded_at)
SELECT $1, $2, $8 + b.ordinal, b.event_id, b.event_type, b.schema_version,
       b.payload::jsonb, b.metadata::jsonb,
       -- Never earlier than the stream's previous event (see append.sql).
       greatest(now(), previous.recorded_at)
FROM (
    SELECT max(e.recorded_at) AS recorded_at, count(*) AS found
    FROM {schema}.events e
    WHERE e.stream_id = $2 AND e.stream_version = $8
) AS previous
CROSS JOIN unnest($3::uuid[], $4::text[], $5::bigint[], $6::text[], $7::text[])
    WITH ORDINALITY AS b (event_id, event_type, schema_version, payload, metadata, ordinal)
WHERE $8::bigint = 0 OR previous.found = 1
ORDER BY b.ordinal
RETURNING stream_version, position, transaction_id::text
