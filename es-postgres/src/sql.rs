//! Every statement the store runs, with its schema filled in once when the store is built.

use es_core::Until;

/// The columns a [`RecordedEvent`](es_core::RecordedEvent) is read from, in the order
/// `read::decode_event` expects.
const EVENT_COLUMNS: &str = "stream_type, stream_id, stream_version, position, transaction_id::text, event_id, \
     event_type, schema_version, payload::text, metadata::text, recorded_at";

/// The statements of one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) append: String,
    pub(crate) classify: String,
    read_stream_to_end: String,
    read_stream_to_version: String,
    read_stream_to_time: String,
    replay_to_end: String,
    replay_to_version: String,
    replay_to_time: String,
    pub(crate) stream_version: String,
    pub(crate) read_all: String,
    pub(crate) read_event: String,
    pub(crate) count_after: String,
    pub(crate) events_after: String,
    pub(crate) save_snapshot: String,
    pub(crate) load_snapshot: String,
    pub(crate) load_checkpoint: String,
    pub(crate) save_checkpoint: String,
    pub(crate) park: String,
    pub(crate) unpark: String,
    pub(crate) reset_projection: String,
    pub(crate) dead_letters: String,
}

impl Sql {
    /// The statements for `schema`, an already quoted identifier.
    pub(crate) fn new(schema: &str) -> Self {
        let s = |template: &str| template.replace("{schema}", schema);
        let read_stream = format!(
            "SELECT {EVENT_COLUMNS} FROM {schema}.events WHERE stream_id = $1 AND stream_version >= $2"
        );
        // What a load needs (`replay::replay_stream`): no ids, positions, times or metadata,
        // whose conversion to text is most of the server's work per row.
        let replay = format!(
            "SELECT stream_type, stream_version, event_type, schema_version, payload::text \
             FROM {schema}.events WHERE stream_id = $1 AND stream_version >= $2"
        );
        Self {
            append: s(include_str!("sql/append.sql")),
            classify: s(include_str!("sql/classify.sql")),
            read_stream_to_end: format!("{read_stream} ORDER BY stream_version"),
            read_stream_to_version: format!(
                "{read_stream} AND stream_version <= $3 ORDER BY stream_version"
            ),
            read_stream_to_time: format!(
                "{read_stream} AND recorded_at <= $3 ORDER BY stream_version"
            ),
            replay_to_end: format!("{replay} ORDER BY stream_version"),
            replay_to_version: format!("{replay} AND stream_version <= $3 ORDER BY stream_version"),
            replay_to_time: format!("{replay} AND recorded_at <= $3 ORDER BY stream_version"),
            stream_version: s(
                "SELECT max(stream_version) FROM {schema}.events WHERE stream_id = $1",
            ),
            read_all: s(include_str!("sql/read_all.sql")),
            read_event: format!(
                "SELECT {EVENT_COLUMNS} FROM {schema}.events \
                 WHERE transaction_id = $1::text::xid8 AND position = $2"
            ),
            count_after: s("SELECT count(*) FROM {schema}.events \
                 WHERE (transaction_id, position) > ($1::text::xid8, $2::bigint)"),
            // Whether events after a position are deliverable now (below the horizon), and
            // whether any exist at all (some may be held back by an older running transaction).
            // First-row probes in log order rather than EXISTS, so that the planner walks the
            // log index instead of scanning the table when nothing follows (see read_all.sql).
            events_after: s(
                "WITH horizon AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) \
                 SELECT \
                   (SELECT position FROM {schema}.events \
                    WHERE transaction_id < (SELECT xmin FROM horizon) \
                      AND (transaction_id, position) > ($1::text::xid8, $2::bigint) \
                    ORDER BY transaction_id, position LIMIT 1) IS NOT NULL, \
                   (SELECT position FROM {schema}.events \
                    WHERE (transaction_id, position) > ($1::text::xid8, $2::bigint) \
                    ORDER BY transaction_id, position LIMIT 1) IS NOT NULL",
            ),
            save_snapshot: s("INSERT INTO {schema}.snapshots AS saved \
                   (stream_id, stream_type, stream_version, state_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4, $5::jsonb, $6) \
                 ON CONFLICT (stream_id) DO UPDATE SET \
                   stream_type = excluded.stream_type, stream_version = excluded.stream_version, \
                   state_version = excluded.state_version, state = excluded.state, \
                   taken_at = excluded.taken_at \
                 WHERE excluded.stream_version >= saved.stream_version"),
            load_snapshot: s(
                "SELECT stream_type, stream_version, state_version, state::text, taken_at \
                 FROM {schema}.snapshots WHERE stream_id = $1",
            ),
            load_checkpoint: s(
                "SELECT transaction_id::text, position FROM {schema}.projection_checkpoints \
                 WHERE projection = $1",
            ),
            save_checkpoint: s(
                "INSERT INTO {schema}.projection_checkpoints (projection, transaction_id, position) \
                 VALUES ($1, $2::text::xid8, $3) \
                 ON CONFLICT (projection) DO UPDATE SET \
                   transaction_id = excluded.transaction_id, position = excluded.position, \
                   updated_at = now()",
            ),
            park: s("INSERT INTO {schema}.dead_letters \
                   (projection, transaction_id, position, event_id, stream_id, stream_version, \
                    event_type, error, attempts, parked_at) \
                 VALUES ($1, $2::text::xid8, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (projection, transaction_id, position) DO UPDATE SET \
                   event_id = excluded.event_id, stream_id = excluded.stream_id, \
                   stream_version = excluded.stream_version, event_type = excluded.event_type, \
                   error = excluded.error, attempts = excluded.attempts, parked_at = excluded.parked_at"),
            unpark: s("DELETE FROM {schema}.dead_letters \
                 WHERE projection = $1 AND transaction_id = $2::text::xid8 AND position = $3"),
            reset_projection: s("WITH checkpoint AS ( \
                   DELETE FROM {schema}.projection_checkpoints WHERE projection = $1) \
                 DELETE FROM {schema}.dead_letters WHERE projection = $1"),
            dead_letters: s(
                "SELECT transaction_id::text, position, event_id, stream_id, stream_version, \
                   event_type, error, attempts, parked_at \
                 FROM {schema}.dead_letters WHERE projection = $1 \
                 ORDER BY transaction_id, position",
            ),
        }
    }

    /// The stream read for `until`; its third parameter, if any, is the bound.
    pub(crate) fn read_stream(&self, until: Until) -> &str {
        match until {
            Until::End => &self.read_stream_to_end,
            Until::Version(_) => &self.read_stream_to_version,
            Until::RecordedAt(_) => &self.read_stream_to_time,
        }
    }

    /// The replay for `until`; its third parameter, if any, is the bound.
    pub(crate) fn replay(&self, until: Until) -> &str {
        match until {
            Until::End => &self.replay_to_end,
            Until::Version(_) => &self.replay_to_version,
            Until::RecordedAt(_) => &self.replay_to_time,
        }
    }
}

/// A 64-bit advisory lock key for `name` (md5-based, so distinct names practically never share
/// a key, unlike `hashtext`'s 32 bits). `$1` is the name.
pub(crate) const ADVISORY_KEY: &str = "('x' || left(md5($1), 16))::bit(64)::bigint";
