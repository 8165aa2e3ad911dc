-- A page of the global log after ($1, $2), in (transaction_id, position) order, holding only
-- events of transactions older than the oldest transaction still running: every transaction
-- below that horizon has ended, so no event can later appear before what is returned.
-- The tenant filter is empty for the log of every tenant (index `events_log_idx`), or an
-- equality on the tenant in $4 for one tenant's log (index `events_tenant_log_idx`): the same
-- walk in log order, from the given position.
--
-- held_back tells the caller that committed events after ($1, $2) exist beyond the horizon
-- (a transaction older than them is still running), so a short page is not the end of the log.
-- The first row always exists; when the page is empty its event columns are NULL.
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
),
page AS (
    SELECT e.*
    FROM {schema}.events e
    WHERE e.transaction_id < (SELECT xmin FROM horizon)
      AND (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint)
      {tenant}
    ORDER BY e.transaction_id, e.position
    LIMIT $3
)
SELECT page.tenant, page.stream_type, page.stream_id, page.stream_version, page.position,
       page.transaction_id::text, page.event_id, page.event_type, page.schema_version,
       page.payload::text, page.metadata::text, page.recorded_at,
       (
           -- Not EXISTS: for EXISTS the planner expects an early match and may pick a
           -- sequential scan, which reads the whole log when (as at its end) nothing matches.
           SELECT e.position
           FROM {schema}.events e
           WHERE e.transaction_id >= (SELECT xmin FROM horizon)
             AND (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint)
             {tenant}
           ORDER BY e.transaction_id, e.position
           LIMIT 1
       ) IS NOT NULL AS held_back
FROM (VALUES (1)) AS one (row)
LEFT JOIN page ON true
ORDER BY page.transaction_id, page.position
