-- The inbox of integration-event consumers: the events each consumer processed, inserted in the
-- transaction of the consumer's own writes, so a message delivered again changes nothing. Not
-- tenant-scoped: an event id is unique across tenants.
CREATE TABLE es_inbox (
    consumer        TEXT    NOT NULL,
    -- Hyphenated lower-case UUID text, as `es_events.event_id`.
    event_id        TEXT    NOT NULL CHECK (length(event_id) = 36),
    -- Microseconds since the Unix epoch (UTC).
    processed_at    INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;
