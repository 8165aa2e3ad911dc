-- After the append found one of its event ids already stored: where each of the batch's ids
-- is, in batch order, and whether the transaction that wrote it also wrote events of the same
-- stream outside this batch (then the stored batch is not the very same batch).
--
-- With tenant isolation, this runs in a transaction scoped to the appending stream's tenant,
-- and finds only that tenant's events.
SELECT b.ordinal, e.event_id, e.tenant, e.stream_type, e.stream_id, e.stream_version,
       e.position, e.transaction_id::text,
       EXISTS (
           SELECT 1
           FROM {schema}.events n
           WHERE n.tenant = e.tenant
             AND n.stream_type = e.stream_type
             AND n.stream_id = e.stream_id
             AND n.stream_version IN (e.stream_version - 1, e.stream_version + 1)
             AND n.transaction_id = e.transaction_id
             AND n.event_id <> ALL ($1::uuid[])
       ) AS written_with_others
FROM unnest($1::uuid[]) WITH ORDINALITY AS b (event_id, ordinal)
JOIN {schema}.events e ON e.event_id = b.event_id
ORDER BY b.ordinal
