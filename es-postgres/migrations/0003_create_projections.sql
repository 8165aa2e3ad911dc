-- Where each projection is in the global log: the position of the last event it handled.
CREATE TABLE projection_checkpoints (
    projection      text        NOT NULL,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (projection)
);

-- Events a projection could not handle and parked so it could go on (dead letters).
CREATE TABLE dead_letters (
    projection      text        NOT NULL,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    attempts        bigint      NOT NULL,
    parked_at       timestamptz NOT NULL,
    CONSTRAINT dead_letters_pkey PRIMARY KEY (projection, transaction_id, position)
);
