-- Streams are keyed by (tenant, stream type, stream id): the same id under two stream types, or
-- in two tenants, names two independent streams with their own versions and snapshots.
--
-- SQLite cannot change the keys of a table in place, so the three tables whose keys change are
-- rebuilt: each old table is renamed out of the way, the new one is created under the real name,
-- the rows are copied, and the old table is dropped. Renaming first (rather than creating the
-- new table under a temporary name and renaming it last) keeps the old dead letters' foreign key
-- valid throughout: while foreign keys are enforced, it follows the old log through its rename,
-- and the old dead letters are dropped before the old log. Every row written before belongs to
-- the default tenant.
--
-- The new dead letters have no foreign key to the log: with one, every event appended made
-- SQLite look for dead letters of its position (an `INSERT ... SELECT` into the parent table),
-- reading every dead letter without an index on `position`, a page of one with it. Runners park
-- only events they read from the log.
--
-- Views or triggers of your own over `es_` tables follow the renamed tables and break when they
-- are dropped: drop them before this migration and create them again after.

ALTER TABLE es_events RENAME TO es_events_before_tenants;

-- The global log, as in the first migration, with the tenant and the stream's full key.
CREATE TABLE es_events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id  INTEGER NOT NULL CHECK (transaction_id BETWEEN 1 AND position),
    tenant          TEXT    NOT NULL,
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
    -- Stream reads, stream versions and the expected-version check of appends. The id comes
    -- first: most comparisons in the index are then settled by its first column, where a
    -- leading tenant (the same in most rows) would send every one through all four.
    UNIQUE (stream_id, stream_type, tenant, stream_version)
) STRICT;

INSERT INTO es_events (position, transaction_id, tenant, stream_type, stream_id, stream_version,
                       event_id, event_type, schema_version, payload, metadata, recorded_at)
SELECT position, transaction_id, 'default', stream_type, stream_id, stream_version,
       event_id, event_type, schema_version, payload, metadata, recorded_at
FROM es_events_before_tenants
ORDER BY position;

-- Positions are never reused: the new log's sequence continues from the old one's, which may
-- be past the last row left (AUTOINCREMENT remembers rows that were deleted).
INSERT INTO sqlite_sequence (name, seq)
SELECT 'es_events', 0
WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'es_events');
UPDATE sqlite_sequence
SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'es_events_before_tenants'), 0))
WHERE name = 'es_events';

-- One tenant's log in position order (`read_all` of a tenant): every index entry of a rowid
-- table ends with the row id, so this index is ordered by (tenant, position).
CREATE INDEX es_events_by_tenant ON es_events (tenant);

ALTER TABLE es_snapshots RENAME TO es_snapshots_before_tenants;

-- The latest snapshot of each stream.
CREATE TABLE es_snapshots (
    tenant          TEXT    NOT NULL,
    stream_type     TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 0),
    state_version   INTEGER NOT NULL CHECK (state_version BETWEEN 0 AND 4294967295),
    state           TEXT    NOT NULL CONSTRAINT state_is_json CHECK (json_valid(state)),
    -- Microseconds since the Unix epoch (UTC).
    taken_at        INTEGER NOT NULL,
    -- The id first, as in the log's stream key.
    PRIMARY KEY (stream_id, stream_type, tenant)
) STRICT, WITHOUT ROWID;

INSERT INTO es_snapshots (tenant, stream_type, stream_id, stream_version, state_version, state,
                          taken_at)
SELECT 'default', stream_type, stream_id, stream_version, state_version, state, taken_at
FROM es_snapshots_before_tenants;

DROP TABLE es_snapshots_before_tenants;

ALTER TABLE es_dead_letters RENAME TO es_dead_letters_before_tenants;

-- Events a projection parked after its handler failed (dead letters), with their stream's key.
CREATE TABLE es_dead_letters (
    projection      TEXT    NOT NULL,
    transaction_id  INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,
    stream_type     TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    parked_at       INTEGER NOT NULL,
    PRIMARY KEY (projection, transaction_id, position)
) STRICT, WITHOUT ROWID;

-- The old dead letters did not keep their stream's type: it is the type of the parked event.
INSERT INTO es_dead_letters (projection, transaction_id, position, event_id, tenant, stream_type,
                             stream_id, stream_version, event_type, error, attempts, parked_at)
SELECT d.projection, d.transaction_id, d.position, d.event_id, 'default',
       coalesce(e.stream_type, ''), d.stream_id, d.stream_version, d.event_type, d.error,
       d.attempts, d.parked_at
FROM es_dead_letters_before_tenants AS d
LEFT JOIN es_events AS e ON e.position = d.position;

DROP TABLE es_dead_letters_before_tenants;
DROP TABLE es_events_before_tenants;
