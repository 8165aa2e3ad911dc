-- The inbox of integration-event consumers: the events each consumer processed, inserted in the
-- transaction of the consumer's own writes, so a message delivered again changes nothing. Not
-- tenant-scoped (an event id is unique across tenants): no row level security.
CREATE TABLE inbox (
    consumer        text        NOT NULL,
    event_id        uuid        NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, event_id)
);
