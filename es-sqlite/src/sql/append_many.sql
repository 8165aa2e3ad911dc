-- A batch of several events in one statement, when the expectation names the stream's version.
-- ?1 tenant, ?2 stream type, ?3 stream id, ?4 the batch as a JSON array of [event_id,
-- event_type, schema_version, payload, metadata] arrays (payload and metadata as JSON strings
-- holding the exact text to store), ?5 the present in microseconds, ?6 the stream's expected
-- version (0: no stream), ?7 the batch's length.
--
-- Like `append_one.sql`: its own transaction, which takes the write lock before it reads; it
-- writes nothing when the stream is not at ?6 or a number would overflow, and fails on the
-- unique key when an event id is stored. It returns no rows: the caller knows the versions
-- (from ?6) and takes the positions from the last row inserted.
INSERT INTO es_events (position, transaction_id, tenant, stream_type, stream_id, stream_version,
                       event_id, event_type, schema_version, payload, metadata, recorded_at)
SELECT head.last_position + 1 + batch.key, head.last_position + 1, ?1, ?2, ?3, ?6 + 1 + batch.key,
       batch.value ->> 0, batch.value ->> 1, batch.value ->> 2, batch.value ->> 3, batch.value ->> 4,
       -- The log's times never decrease, even when the system clock steps back.
       max(?5, coalesce(head.last_recorded_at, ?5))
FROM (
    SELECT
        (SELECT max(stream_version) FROM es_events
         WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3) AS version,
        max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'es_events'), 0),
            coalesce((SELECT max(position) FROM es_events), 0)) AS last_position,
        (SELECT recorded_at FROM es_events
         WHERE position = (SELECT max(position) FROM es_events)) AS last_recorded_at
) AS head,
json_each(?4) AS batch
WHERE coalesce(head.version, 0) = ?6
  AND ?6 <= 9223372036854775807 - ?7
  AND head.last_position <= 9223372036854775807 - ?7
ORDER BY batch.key
