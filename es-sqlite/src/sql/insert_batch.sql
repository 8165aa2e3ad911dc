-- A whole batch in one statement. Positions and versions are consecutive from the given
-- first ones; the batch shares one transaction id (its first position) and one time.
-- ?1 first position; ?2 tenant; ?3 stream type; ?4 stream id; ?5 first version; ?6 recorded
-- at; ?7 the batch as a JSON array of [event_id, event_type, schema_version, payload, metadata]
-- arrays, payload and metadata as JSON strings holding the exact text to store.
INSERT INTO es_events (position, transaction_id, tenant, stream_type, stream_id, stream_version,
                       event_id, event_type, schema_version, payload, metadata, recorded_at)
SELECT ?1 + batch.key, ?1, ?2, ?3, ?4, ?5 + batch.key,
       batch.value ->> 0, batch.value ->> 1, batch.value ->> 2, batch.value ->> 3, batch.value ->> 4,
       ?6
FROM json_each(?7) AS batch
ORDER BY batch.key
