//! Every statement the store runs, with its schema filled in once when the store is built.
//!
//! A stream is named by `tenant = $1 AND stream_type = $2 AND stream_id = $3` everywhere: an
//! equality on the whole primary key prefix, which no cached generic plan turns into a scan.

use es_core::Until;

/// The columns a [`RecordedEvent`](es_core::RecordedEvent) is read from, in the order
/// `read::decode_event` expects.
const EVENT_COLUMNS: &str = "tenant, stream_type, stream_id, stream_version, position, \
     transaction_id::text, event_id, event_type, schema_version, payload::text, metadata::text, \
     recorded_at";

/// The name of the setting that scopes a transaction to a tenant under tenant isolation: row
/// level security policies compare each row's tenant with it.
pub(crate) const TENANT_SETTING: &str = "es.tenant";

/// Scopes the current transaction to tenant `$1`: `set_config(.., true)` lasts until the
/// transaction ends, so a pooled connection never carries a tenant into another transaction.
pub(crate) const SET_TENANT: &str = "SELECT set_config('es.tenant', $1, true)";

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
    read_all: [String; 2],
    count_after: [String; 2],
    events_after: [String; 2],
    pub(crate) find_event: String,
    pub(crate) save_snapshot: String,
    pub(crate) load_snapshot: String,
    pub(crate) load_checkpoint: String,
    pub(crate) save_checkpoint: String,
    pub(crate) park: String,
    pub(crate) unpark: String,
    pub(crate) reset_projection: String,
    pub(crate) dead_letters: String,
    pub(crate) fence: String,
    pub(crate) record_processed: String,
}

impl Sql {
    /// The statements for `schema`, an already quoted identifier.
    pub(crate) fn new(schema: &str) -> Self {
        let s = |template: &str| template.replace("{schema}", schema);
        // The log of every tenant, and of the tenant bound as parameter `n`.
        let scoped = |template: &str, n: u8| {
            [
                s(template).replace("{tenant}", ""),
                s(template).replace("{tenant}", &format!("AND e.tenant = ${n}")),
            ]
        };
        let stream = "tenant = $1 AND stream_type = $2 AND stream_id = $3 AND stream_version >= $4";
        let read_stream = format!("SELECT {EVENT_COLUMNS} FROM {schema}.events WHERE {stream}");
        // What a load needs (`replay::replay_stream`): no ids, positions, times or metadata,
        // whose conversion to text is most of the server's work per row.
        let replay = format!(
            "SELECT stream_version, event_type, schema_version, payload::text \
             FROM {schema}.events WHERE {stream}"
        );
        Self {
            append: s(include_str!("sql/append.sql")),
            classify: s(include_str!("sql/classify.sql")),
            read_stream_to_end: format!("{read_stream} ORDER BY stream_version"),
            read_stream_to_version: format!(
                "{read_stream} AND stream_version <= $5 ORDER BY stream_version"
            ),
            read_stream_to_time: format!(
                "{read_stream} AND recorded_at <= $5 ORDER BY stream_version"
            ),
            replay_to_end: format!("{replay} ORDER BY stream_version"),
            replay_to_version: format!("{replay} AND stream_version <= $5 ORDER BY stream_version"),
            replay_to_time: format!("{replay} AND recorded_at <= $5 ORDER BY stream_version"),
            stream_version: s("SELECT max(stream_version) FROM {schema}.events \
                 WHERE tenant = $1 AND stream_type = $2 AND stream_id = $3"),
            read_all: scoped(include_str!("sql/read_all.sql"), 4),
            count_after: scoped(
                "SELECT count(*) FROM {schema}.events e \
                 WHERE (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint) {tenant}",
                3,
            ),
            // Whether events after a position are deliverable now (below the horizon), and
            // whether any exist at all (some may be held back by an older running transaction).
            // First-row probes in log order rather than EXISTS, so that the planner walks the
            // log index instead of scanning the table when nothing follows (see read_all.sql).
            events_after: scoped(
                "WITH horizon AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) \
                 SELECT \
                   (SELECT e.position FROM {schema}.events e \
                    WHERE e.transaction_id < (SELECT xmin FROM horizon) \
                      AND (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint) {tenant} \
                    ORDER BY e.transaction_id, e.position LIMIT 1) IS NOT NULL, \
                   (SELECT e.position FROM {schema}.events e \
                    WHERE (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint) {tenant} \
                    ORDER BY e.transaction_id, e.position LIMIT 1) IS NOT NULL",
                3,
            ),
            find_event: format!(
                "SELECT {EVENT_COLUMNS} FROM {schema}.events \
                 WHERE event_id = $1 AND ($2::text IS NULL OR tenant = $2)"
            ),
            save_snapshot: s("INSERT INTO {schema}.snapshots AS saved \
                   (tenant, stream_type, stream_id, stream_version, state_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) \
                 ON CONFLICT (tenant, stream_type, stream_id) DO UPDATE SET \
                   stream_version = excluded.stream_version, \
                   state_version = excluded.state_version, state = excluded.state, \
                   taken_at = excluded.taken_at \
                 WHERE excluded.stream_version >= saved.stream_version"),
            load_snapshot: s(
                "SELECT stream_version, state_version, state::text, taken_at \
                 FROM {schema}.snapshots \
                 WHERE tenant = $1 AND stream_type = $2 AND stream_id = $3",
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
                   (projection, transaction_id, position, event_id, tenant, stream_type, stream_id, \
                    stream_version, event_type, error, attempts, parked_at) \
                 VALUES ($1, $2::text::xid8, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (projection, transaction_id, position) DO UPDATE SET \
                   event_id = excluded.event_id, tenant = excluded.tenant, \
                   stream_type = excluded.stream_type, stream_id = excluded.stream_id, \
                   stream_version = excluded.stream_version, event_type = excluded.event_type, \
                   error = excluded.error, attempts = excluded.attempts, parked_at = excluded.parked_at"),
            unpark: s("DELETE FROM {schema}.dead_letters \
                 WHERE projection = $1 AND transaction_id = $2::text::xid8 AND position = $3"),
            reset_projection: s("WITH checkpoint AS ( \
                   DELETE FROM {schema}.projection_checkpoints WHERE projection = $1) \
                 DELETE FROM {schema}.dead_letters WHERE projection = $1"),
            dead_letters: s(
                "SELECT transaction_id::text, position, event_id, tenant, stream_type, stream_id, \
                   stream_version, event_type, error, attempts, parked_at \
                 FROM {schema}.dead_letters WHERE projection = $1 \
                 ORDER BY transaction_id, position",
            ),
            // First the transaction takes the projection's batch key ($1) shared, until it ends;
            // then it checks that the lock ($2) is held by the backend that took it ($3). The
            // materialized CTE is read before the check is evaluated, so the order is fixed.
            fence: format!(
                "WITH batch AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({})) \
                 SELECT EXISTS (SELECT 1 FROM pg_locks \
                   WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND pid = $3 \
                     AND objsubid = 1 \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND ((classid::bigint << 32) | objid::bigint) = {}) \
                 FROM batch",
                advisory_key(1),
                advisory_key(2)
            ),
            record_processed: s(
                "INSERT INTO {schema}.inbox (consumer, event_id) VALUES ($1, $2) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
            ),
        }
    }

    /// The stream read for `until`; its fifth parameter, if any, is the bound.
    pub(crate) fn read_stream(&self, until: Until) -> &str {
        match until {
            Until::End => &self.read_stream_to_end,
            Until::Version(_) => &self.read_stream_to_version,
            Until::RecordedAt(_) => &self.read_stream_to_time,
        }
    }

    /// The replay for `until`; its fifth parameter, if any, is the bound.
    pub(crate) fn replay(&self, until: Until) -> &str {
        match until {
            Until::End => &self.replay_to_end,
            Until::Version(_) => &self.replay_to_version,
            Until::RecordedAt(_) => &self.replay_to_time,
        }
    }

    /// A page of the log of every tenant, or of one (its fourth parameter).
    ///
    /// The statements on one tenant's log run unprepared, each planned for the tenant it reads:
    /// a generic plan, cached by a prepared statement, cannot tell a tenant with few events from
    /// one with most of them. Planned once while the log held one tenant, it walks the log
    /// index and filters on the tenant, which for any other tenant reads the whole log on every
    /// page (150,000 rows for 30 looks at a 5,000-event log, in
    /// `tests/projections.rs`); planned for the tenant, it walks the tenant's own index,
    /// `events_tenant_log_idx`. The price: a planning and a second round trip per statement, on
    /// a projection's path, not an append's.
    pub(crate) fn read_all(&self, one_tenant: bool) -> &str {
        &self.read_all[usize::from(one_tenant)]
    }

    /// The count of events after a position, of every tenant or of one (its third parameter).
    pub(crate) fn count_after(&self, one_tenant: bool) -> &str {
        &self.count_after[usize::from(one_tenant)]
    }

    /// Whether events follow a position, of every tenant or of one (its third parameter).
    pub(crate) fn events_after(&self, one_tenant: bool) -> &str {
        &self.events_after[usize::from(one_tenant)]
    }
}

/// A 64-bit advisory lock key for the name in parameter `n` (md5-based, so distinct names
/// practically never share a key, unlike `hashtext`'s 32 bits).
pub(crate) fn advisory_key(n: u8) -> String {
    format!("('x' || left(md5(${n}), 16))::bit(64)::bigint")
}

/// [`advisory_key`] of parameter `$1`.
pub(crate) const ADVISORY_KEY: &str = "('x' || left(md5($1), 16))::bit(64)::bigint";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advisory_key_of_parameter_one_is_the_constant() {
        assert_eq!(advisory_key(1), ADVISORY_KEY);
    }

    #[test]
    fn tenant_scoped_statements_filter_on_the_tenant_parameter() {
        let sql = Sql::new("\"es\"");
        assert!(!sql.read_all(false).contains("e.tenant ="));
        assert_eq!(sql.read_all(true).matches("AND e.tenant = $4").count(), 2);
        assert!(sql.count_after(true).contains("AND e.tenant = $3"));
        assert_eq!(
            sql.events_after(true).matches("AND e.tenant = $3").count(),
            2
        );
        assert!(!sql.events_after(false).contains("{tenant}"));
        assert!(!sql.fence.contains("$4"));
    }
}
