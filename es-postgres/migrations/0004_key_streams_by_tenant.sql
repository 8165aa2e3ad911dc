-- Streams are keyed by (tenant, stream type, stream id): two streams with the same id are
-- independent when their types or tenants differ. Everything written before tenants existed
-- belongs to the default tenant, `default`.
--
-- The new columns are added with that default, which PostgreSQL records once instead of
-- rewriting the rows, and the default is dropped right after: every writer names the tenant,
-- so a hand-written INSERT that forgets it fails instead of landing in the default tenant.
--
-- The primary keys are rebuilt, which reads the whole table under an exclusive lock: appends
-- and reads wait until this migration commits.

-- Before, a stream was the rows sharing a stream id, whatever their stream type. A stream id
-- stored under two stream types would become two streams, each with gaps in its versions:
-- refuse to migrate such a log rather than split its streams.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM events GROUP BY stream_id HAVING count(DISTINCT stream_type) > 1
    ) THEN
        RAISE EXCEPTION 'a stream id is stored under more than one stream type'
            USING HINT = 'find them with SELECT stream_id FROM events GROUP BY stream_id '
                         'HAVING count(DISTINCT stream_type) > 1, give each stream one type, '
                         'then migrate again';
    END IF;
END
$$;

ALTER TABLE events ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE events ALTER COLUMN tenant DROP DEFAULT;
-- Two appends that want the same version of a stream still collide here (SQLSTATE 23505).
ALTER TABLE events
    DROP CONSTRAINT events_pkey,
    ADD CONSTRAINT events_pkey PRIMARY KEY (tenant, stream_type, stream_id, stream_version);
-- One tenant's part of the global log, in the order readers consume it.
CREATE INDEX events_tenant_log_idx ON events (tenant, transaction_id, position);

ALTER TABLE snapshots ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE snapshots ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE snapshots
    DROP CONSTRAINT snapshots_pkey,
    ADD CONSTRAINT snapshots_pkey PRIMARY KEY (tenant, stream_type, stream_id);

-- A parked event names its whole stream. Letters whose event is gone (deleted behind the
-- store's back) cannot tell their stream type; they keep an empty one.
ALTER TABLE dead_letters ADD COLUMN tenant text, ADD COLUMN stream_type text;
UPDATE dead_letters d
SET tenant = e.tenant, stream_type = e.stream_type
FROM events e
WHERE e.event_id = d.event_id;
UPDATE dead_letters SET tenant = 'default', stream_type = '' WHERE tenant IS NULL;
ALTER TABLE dead_letters
    ALTER COLUMN tenant SET NOT NULL,
    ALTER COLUMN stream_type SET NOT NULL;
