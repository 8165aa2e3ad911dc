-- What an append needs to know, read under the write lock in one statement:
-- the stream's version, the last position handed out, the log's last time, and the first of the
-- batch's event ids (in batch order) that is already stored, if any, with the key of the stream
-- holding it.
-- ?1 tenant, ?2 stream type, ?3 stream id; ?4 the batch as a JSON array of [event_id, ...]
-- arrays.
SELECT
    (SELECT max(stream_version) FROM es_events
     WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3) AS current_version,
    max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'es_events'), 0),
        coalesce((SELECT max(position) FROM es_events), 0)) AS last_position,
    (SELECT recorded_at FROM es_events
     WHERE position = (SELECT max(position) FROM es_events)) AS last_recorded_at,
    found.batch_index,
    found.position AS found_position,
    found.transaction_id AS found_transaction,
    found.tenant AS found_tenant,
    found.stream_type AS found_stream_type,
    found.stream_id AS found_stream_id,
    found.stream_version AS found_version
FROM (SELECT 1)
LEFT JOIN (
    SELECT batch.key AS batch_index, e.position, e.transaction_id, e.tenant, e.stream_type,
           e.stream_id, e.stream_version
    FROM json_each(?4) AS batch
    JOIN es_events AS e ON e.event_id = batch.value ->> 0
    ORDER BY batch.key
    LIMIT 1
) AS found
