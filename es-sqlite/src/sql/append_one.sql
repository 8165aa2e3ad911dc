-- One event in one statement (the common append: a command that decided one event).
-- ?1 tenant, ?2 stream type, ?3 stream id, ?4 the expectation ('any', 'no_stream',
-- 'stream_exists', 'exact') and ?5 its version, ?6..?10 the event (id, type, schema version,
-- payload, metadata), ?11 the present in microseconds.
--
-- Run as its own transaction: SQLite takes the write lock when the statement starts, before it
-- reads, so the stream's version, the last position and the last time are read and the row
-- written in one state no other writer can change. It writes nothing when the expectation does
-- not hold or a number would overflow; a reused event id fails on the unique key. In both cases
-- the caller goes the general way (`append_state.sql`), which tells the cases apart.
INSERT INTO es_events (position, transaction_id, tenant, stream_type, stream_id, stream_version,
                       event_id, event_type, schema_version, payload, metadata, recorded_at)
SELECT head.last_position + 1, head.last_position + 1, ?1, ?2, ?3, coalesce(head.version, 0) + 1,
       ?6, ?7, ?8, ?9, ?10,
       -- The log's times never decrease, even when the system clock steps back.
       max(?11, coalesce(head.last_recorded_at, ?11))
FROM (
    SELECT
        (SELECT max(stream_version) FROM es_events
         WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3) AS version,
        max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'es_events'), 0),
            coalesce((SELECT max(position) FROM es_events), 0)) AS last_position,
        (SELECT recorded_at FROM es_events
         WHERE position = (SELECT max(position) FROM es_events)) AS last_recorded_at
) AS head
WHERE CASE ?4
          WHEN 'any' THEN 1
          WHEN 'no_stream' THEN head.version IS NULL
          WHEN 'stream_exists' THEN head.version IS NOT NULL
          ELSE coalesce(head.version, 0) = ?5
      END
  AND coalesce(head.version, 0) < 9223372036854775807
  AND head.last_position < 9223372036854775807
RETURNING stream_version, position
