-- The event store: the global log, snapshots, and the state of projections.
--
-- Every table is STRICT (SQLite checks column types) and prefixed `es_`, so an application can
-- keep its own tables (read models) in the same file.

-- The global log. `position` is the event's global sequence number; `transaction_id` is the
-- position of the first event its append wrote, shared by the whole batch. SQLite has one
-- writer at a time, so positions are assigned in commit order and `(transaction_id, position)`
-- orders exactly like `position`. AUTOINCREMENT: a position is never reused, even after a
-- delete.
CREATE TABLE es_events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id  INTEGER NOT NULL CHECK (transaction_id BETWEEN 1 AND position),
    stream_type     TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 1),
    -- Hyphenated lower-case UUID text, readable with the sqlite3 shell.
    event_id        TEXT    NOT NULL UNIQUE CHECK (length(event_id) = 36),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL CHECK (schema_version BETWEEN 0 AND 4294967295),
    payload         TEXT    NOT NULL CONSTRAINT payload_is_json CHECK (json_valid(payload)),
    metadata        TEXT    NOT NULL CONSTRAINT metadata_is_json CHECK (json_valid(metadata)),
    -- Microseconds since the Unix epoch (UTC); never decreases along the log.
    recorded_at     INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version)
) STRICT;

-- The latest snapshot of each stream.
CREATE TABLE es_snapshots (
    stream_id       TEXT    PRIMARY KEY,
    stream_type     TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 0),
    state_version   INTEGER NOT NULL CHECK (state_version BETWEEN 0 AND 4294967295),
    state           TEXT    NOT NULL CONSTRAINT state_is_json CHECK (json_valid(state)),
    -- Microseconds since the Unix epoch (UTC).
    taken_at        INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Where each projection is in the global log.
CREATE TABLE es_checkpoints (
    projection      TEXT    PRIMARY KEY,
    transaction_id  INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Events a projection parked after its handler failed (dead letters).
CREATE TABLE es_dead_letters (
    projection      TEXT    NOT NULL,
    transaction_id  INTEGER NOT NULL,
    position        INTEGER NOT NULL REFERENCES es_events (position),
    event_id        TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    parked_at       INTEGER NOT NULL,
    PRIMARY KEY (projection, transaction_id, position)
) STRICT, WITHOUT ROWID;

-- One runner per projection: the holder's store instance (`owner`), the lease it took
-- (`lease_id`) and its last heartbeat (microseconds since the Unix epoch). A lease whose
-- heartbeat is older than the lease time may be taken over.
CREATE TABLE es_projection_locks (
    projection      TEXT    PRIMARY KEY,
    owner           TEXT    NOT NULL,
    lease_id        TEXT    NOT NULL,
    heartbeat_at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
