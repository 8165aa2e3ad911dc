-- What an append needs to know, read under the write lock in one statement:
-- the stream's version, the last position handed out, the log's last time, and the first of the
-- batch's event ids (in batch order) that is already stored, if any.
-- ?1: the stream id; ?2: the batch as a JSON array of [event_id, ...] arrays.
SELECT
    (SELECT max(stream_version) FROM es_events WHERE stream_id = ?1) AS current_version,
    max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'es_events'), 0),
        coalesce((SELECT max(position) FROM es_events), 0)) AS last_position,
    (SELECT recorded_at FROM es_events ORDER BY position DESC LIMIT 1) AS last_recorded_at,
    found.batch_index,
    found.position AS found_position,
    found.transaction_id AS found_transaction,
    found.stream_id AS found_stream_id,
    found.stream_version AS found_version
FROM (SELECT 1)
LEFT JOIN (
    SELECT batch.key AS batch_index, e.position, e.transaction_id, e.stream_id, e.stream_version
    FROM json_each(?2) AS batch
    JOIN es_events AS e ON e.event_id = batch.value ->> 0
    ORDER BY batch.key
    LIMIT 1
) AS found
