-- The event log. One row per event; a stream is the rows sharing a stream_id.
--
-- position        the global sequence number, taken at insert (so it is NOT commit order).
-- transaction_id  the writing transaction's id. The global log is ordered by
--                 (transaction_id, position) and readers only see transactions below the
--                 oldest running one, so no reader skips an event that commits late.
CREATE TABLE events (
    position        bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  bigint      NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Two appends that want the same version collide here: the loser gets SQLSTATE 23505.
    CONSTRAINT events_pkey PRIMARY KEY (stream_id, stream_version),
    -- Idempotent append: an event id is stored once.
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 1),
    CONSTRAINT events_schema_version_check CHECK (schema_version BETWEEN 0 AND 4294967295)
);

-- The global log ($all) in the order readers consume it.
CREATE INDEX events_log_idx ON events (transaction_id, position);
