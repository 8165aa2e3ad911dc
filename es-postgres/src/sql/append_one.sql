-- One event to a stream expected new or at an exact version: a plain insert of the next
-- version, as a hand-written service would run it, without the batch's arrays.
--
-- $1 tenant, $2 stream type, $3 stream id, $4 event id, $5 event type, $6 schema version,
-- $7 payload, $8 metadata, $9 the expected version (0: no stream).
--
-- It writes the event only when the stream is at exactly that version: the row at the expected
-- version must exist (none is needed for a new stream), and the primary key refuses the next
-- version if another writer holds it. Anything else (nothing written, a unique violation)
-- falls back to the general statement (`append.sql`), which decides on committed data.
INSERT INTO {schema}.events
    (tenant, stream_type, stream_id, stream_version, event_id, event_type, schema_version,
     payload, metadata, recorded_at)
SELECT $1, $2, $3, $9::bigint + 1, $4, $5, $6, $7::text::jsonb, $8::text::jsonb,
       -- Never earlier than the stream's previous event (see `append.sql`).
       greatest(now(), previous.recorded_at)
FROM (
    SELECT NULL::timestamptz AS recorded_at WHERE $9::bigint = 0
    UNION ALL
    SELECT e.recorded_at
    FROM {schema}.events e
    WHERE e.tenant = $1 AND e.stream_type = $2 AND e.stream_id = $3
      AND e.stream_version = $9::bigint
) AS previous
RETURNING position, transaction_id::text
