-- One append, one statement, one round trip.
--
-- $1 tenant, $2 stream type, $3 stream id, $4..$8 the batch as parallel arrays (ids, types,
-- schema versions, payloads, metadata), $9 the expectation ('any', 'no_stream',
-- 'stream_exists', 'exact'), $10 the exact version.
--
-- The expectation is checked against this statement's snapshot. A writer that commits the same
-- version after that snapshot is caught by the primary key: this statement then fails with
-- SQLSTATE 23505 and the caller runs it again with a fresh snapshot, so a conflict is always
-- decided on committed data.
--
-- No NOTIFY here: PostgreSQL serialises the commits of notifying transactions, so the store
-- notifies from a background task after the commit (`notifier.rs`).
--
-- No idempotency probe here: a stored event id fails the insert on `events_event_id_key`, and
-- when the expectation does not hold (nothing written) the caller looks the ids up before it
-- reports a conflict (`classify.sql`), so a re-sent batch is still never a conflict. A probe
-- `event_id = ANY ($4)` in this prepared statement was planned once, generically, while the
-- table was small, as a sequential scan, and then scanned the whole log on every append
-- (docs/BENCHMARKS.md, W6).
WITH batch AS (
    SELECT b.event_id, b.event_type, b.schema_version, b.payload, b.metadata, b.ordinal
    FROM unnest($4::uuid[], $5::text[], $6::bigint[], $7::text[], $8::text[])
        WITH ORDINALITY AS b (event_id, event_type, schema_version, payload, metadata, ordinal)
),
last AS (
    SELECT e.stream_version, e.recorded_at
    FROM {schema}.events e
    WHERE e.tenant = $1 AND e.stream_type = $2 AND e.stream_id = $3
    ORDER BY e.stream_version DESC
    LIMIT 1
),
head AS (
    SELECT
        (SELECT stream_version FROM last) AS version,
        -- Never earlier than the stream's previous event, so that reading "as of a time"
        -- always yields a prefix of the stream.
        greatest(now(), (SELECT recorded_at FROM last)) AS recorded_at
),
inserted AS (
    INSERT INTO {schema}.events
        (tenant, stream_type, stream_id, stream_version, event_id, event_type, schema_version,
         payload, metadata, recorded_at)
    SELECT $1, $2, $3, coalesce(head.version, 0) + batch.ordinal, batch.event_id, batch.event_type,
           batch.schema_version, batch.payload::jsonb, batch.metadata::jsonb, head.recorded_at
    FROM head CROSS JOIN batch
    WHERE CASE $9::text
              WHEN 'any' THEN true
              WHEN 'no_stream' THEN head.version IS NULL
              WHEN 'stream_exists' THEN head.version IS NOT NULL
              ELSE coalesce(head.version, 0) = $10::bigint
          END
    ORDER BY batch.ordinal
    RETURNING stream_version, position, transaction_id
),
summary AS (
    SELECT count(*) AS written,
           max(stream_version) AS last_version,
           max(position) AS last_position,
           -- One transaction wrote every row: any aggregate returns its id.
           max(transaction_id::text) AS last_transaction
    FROM inserted
)
SELECT head.version, summary.written, summary.last_version, summary.last_position,
       summary.last_transaction,
       -- When nothing was written: the id of the event right after the exact version, where a
       -- re-sent batch of this expectation sits, so that a plain conflict needs no look-up of
       -- the batch's ids (`classify.sql`, a round trip more; W5 in docs/BENCHMARKS.md). An
       -- equality on the stream key, like `last`, which no cached plan turns into a scan.
       CASE WHEN summary.written = 0 THEN (
           SELECT e.event_id
           FROM {schema}.events e
           WHERE e.tenant = $1 AND e.stream_type = $2 AND e.stream_id = $3
             AND e.stream_version = $10::bigint + 1
       ) END AS next_event_id
FROM head CROSS JOIN summary
