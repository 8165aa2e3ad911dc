-- The latest snapshot of each stream (replaced on save).
CREATE TABLE snapshots (
    stream_id       text        NOT NULL,
    stream_type     text        NOT NULL,
    stream_version  bigint      NOT NULL,
    state_version   bigint      NOT NULL,
    state           jsonb       NOT NULL,
    taken_at        timestamptz NOT NULL,
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_id),
    CONSTRAINT snapshots_stream_version_check CHECK (stream_version >= 0),
    CONSTRAINT snapshots_state_version_check CHECK (state_version BETWEEN 0 AND 4294967295)
);
