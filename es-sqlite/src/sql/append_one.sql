-- One event in one statement (the common append: a command that decided one event).
-- ?1 stream type, ?2 stream id, ?3 the expectation ('any', 'no_stream', 'stream_exists',
-- 'exact') and ?4 its version, ?5..?9 the event (id, type, schema version, payload, metadata),
-- ?10 the present in microseconds.
--
-- Run as its own transaction: SQLite takes the write lock when the statement starts, before it
-- reads, so the stream's version, the last position and the last time are read and the row
-- written in one state no other writer can change. It writes nothing when the expectation does
-- not hold or a number would overflow; a reused event id fails on the unique key. In both cases
-- the caller goes the general way (`append_state.sql`), which tells the cases apart.
INSERT INTO es_events (position, transaction_id, stream_type, stream_id, stream_version,
                       event_id, event_type, schema_version, payload, metadata, recorded_at)
SELECT head.last_position + 1, head.last_position + 1, ?1, ?2, coalesce(head.version, 0) + 1,
       ?5, ?6, ?7, ?8, ?9,
       -- The log's times never decrease, even when the system clock steps back.
       max(?10, coalesce(head.last_recorded_at, ?10))
FROM (
    SELECT
        (SELECT max(stream_version) FROM es_events WHERE stream_id = ?2) AS version,
        max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'es_events'), 0),
            coalesce((SELECT max(position) FROM es_events), 0)) AS last_position,
        (SELECT recorded_at FROM es_events ORDER BY position DESC LIMIT 1) AS last_recorded_at
) AS head
WHERE CASE ?3
          WHEN 'any' THEN 1
          WHEN 'no_stream' THEN head.version IS NULL
          WHEN 'stream_exists' THEN head.version IS NOT NULL
          ELSE coalesce(head.version, 0) = ?4
      END
  AND coalesce(head.version, 0) < 9223372036854775807
  AND head.last_position < 9223372036854775807
RETURNING stream_version, position
