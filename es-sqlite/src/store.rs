//! [`SqliteStore`] and its [`EventStore`] implementation.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use es_core::contract;
use es_core::{
    AppendOutcome, AppendedRange, EventStore, EventStream, ExpectedVersion, LogScope, NewEvent,
    Position, RecordedEvent, ReplayedEvent, Snapshot, StoreError, StreamKey, StreamKeyBuf, Until,
};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::store_error;
use crate::open::pool_path;
use crate::options::SqliteOptions;
use crate::rows::{self, EVENT_COLUMNS, micros, now_micros, position_params, saturating_i64};

/// How many rows a stream read fetches per query.
pub(crate) const PAGE: usize = 500;

/// The rows of a stream read: `?1` tenant, `?2` stream type, `?3` stream id, `?4`..`?5`
/// versions, `?6` latest recording time.
const READ_STREAM_FILTER: &str = "tenant = ?1 AND stream_type = ?2 AND stream_id = ?3 \
     AND stream_version BETWEEN ?4 AND ?5 AND recorded_at <= ?6";

/// A page of a stream read as one JSON value (see [`rows::page_query`]); `?7` the page size.
pub(crate) static READ_STREAM_PAGE: LazyLock<String> =
    LazyLock::new(|| rows::page_query(READ_STREAM_FILTER, "stream_version", "?7"));

/// The last version of a stream: `?1` tenant, `?2` stream type, `?3` stream id.
pub(crate) const STREAM_VERSION: &str = "SELECT max(stream_version) FROM es_events \
     WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3";

/// After the one-statement append wrote nothing: the stream's version (`?1`..`?3` its key) and
/// whether an id of the batch (`?4`, as in `append_state.sql`) is stored.
pub(crate) const PLAIN_CONFLICT: &str = "SELECT (SELECT max(stream_version) FROM es_events \
         WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3), \
       EXISTS (SELECT 1 FROM json_each(?4) AS batch \
               JOIN es_events AS e ON e.event_id = batch.value ->> 0)";

/// The events a batch whose first event is at position `?1` wrote, and the next one: `?2` the
/// batch's length.
pub(crate) const STORED_BATCH: &str = "SELECT event_id, stream_version, position FROM es_events \
     WHERE position BETWEEN ?1 AND ?1 + ?2 AND transaction_id = ?1 ORDER BY position";

/// The event with id `?1`.
pub(crate) static FIND_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {EVENT_COLUMNS} FROM es_events WHERE event_id = ?1 AND (?2 IS NULL OR tenant = ?2)"
    )
});

/// A stream's snapshot: `?1` tenant, `?2` stream type, `?3` stream id.
pub(crate) const LOAD_SNAPSHOT: &str = "SELECT tenant, stream_type, stream_id, stream_version, \
       state_version, state, taken_at \
     FROM es_snapshots WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3";

/// The statements that read the global log after a position, for one [`LogScope`]. Their
/// parameters: `?1`, `?2` the position, `?3` the smaller of the two, then for one tenant `?4`
/// the tenant; the page size, where there is one, comes last. Bind them with
/// [`bind_log_filter`].
pub(crate) struct LogQueries {
    /// A page of events as one JSON value (see [`rows::page_query`]).
    pub(crate) page: String,
    /// The same page row by row, for a page that does not parse as JSON.
    pub(crate) rows: String,
    /// How many events there are.
    pub(crate) count: String,
    /// Whether there is any.
    pub(crate) exists: String,
}

impl LogQueries {
    fn new(filter: &str, limit: &str) -> Self {
        Self {
            page: rows::page_query(filter, "position", limit),
            rows: format!(
                "SELECT {EVENT_COLUMNS} FROM es_events WHERE {filter} ORDER BY position LIMIT {limit}"
            ),
            count: format!("SELECT count(*) FROM es_events WHERE {filter}"),
            exists: format!("SELECT EXISTS (SELECT 1 FROM es_events WHERE {filter})"),
        }
    }
}

/// Events after a position. The first condition only lets SQLite start at the right place of
/// the key it reads: positions are assigned in commit order and a batch's transaction id is its
/// first position, so `(transaction_id, position)` orders like `position`.
const AFTER: &str =
    "position > ?3 AND (transaction_id > ?1 OR (transaction_id = ?1 AND position > ?2))";

/// The whole log: the primary key, in order.
pub(crate) static ALL_TENANTS: LazyLock<LogQueries> =
    LazyLock::new(|| LogQueries::new(AFTER, "?4"));

/// One tenant's log: the index on `tenant`, whose entries end with the position, in order.
pub(crate) static ONE_TENANT: LazyLock<LogQueries> =
    LazyLock::new(|| LogQueries::new(&format!("tenant = ?4 AND {AFTER}"), "?5"));

/// The statements reading `scope`.
pub(crate) fn log_queries(scope: LogScope<'_>) -> &'static LogQueries {
    match scope {
        LogScope::AllTenants => &ALL_TENANTS,
        LogScope::Tenant(_) => &ONE_TENANT,
    }
}

/// A statement of [`log_queries`] with its position (and tenant) bound; the page size, where it
/// has one, is bound next.
pub(crate) fn bind_log_filter<'q>(
    query: &'q str,
    scope: LogScope<'q>,
    after: Position,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let (transaction, sequence) = position_params(after);
    let query = sqlx::query(query)
        .bind(transaction)
        .bind(sequence)
        .bind(transaction.min(sequence));
    match scope {
        LogScope::AllTenants => query,
        LogScope::Tenant(tenant) => query.bind(tenant),
    }
}

/// One page of a stream read, converted: its events (up to the first unreadable row), whether
/// it was full (more may follow) and the version of its last row.
struct Page {
    events: VecDeque<Result<RecordedEvent, StoreError>>,
    full: bool,
    last_version: Option<i64>,
}

/// An event store in one SQLite file (WAL mode), cheap to clone: clones share the pool, the
/// in-process write queue and the live-append notification.
///
/// See the [crate documentation](crate) for the file layout and the concurrency model.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    pub(crate) shared: Arc<Shared>,
}

/// What the clones of one store share.
#[derive(Debug)]
pub(crate) struct Shared {
    path: PathBuf,
    /// Writes of this process queue here, so they meet SQLite's write lock one at a time instead
    /// of polling for it in SQLite's busy handler.
    pub(crate) writer: tokio::sync::Mutex<()>,
    /// Woken after every append of this store, for live projections.
    pub(crate) appended: tokio::sync::Notify,
    /// This store's identity in the projection lock table: `<pid>:<uuid>`.
    pub(crate) owner: String,
    /// The projections a runner of this store holds.
    pub(crate) held: Mutex<HashSet<String>>,
    pub(crate) options: SqliteOptions,
}

impl SqliteStore {
    /// A store on a pool you configured. Nothing is checked or created, and the schema is not
    /// migrated: call [`migrate`](Self::migrate) once (or let a deploy step do it). Use
    /// [`connect_options`](Self::connect_options) for the settings the store relies on (WAL and
    /// a busy timeout above all).
    pub fn new(pool: SqlitePool) -> Self {
        Self::new_with(pool, SqliteOptions::default())
    }

    /// [`new`](Self::new) with options (the pool settings among them, and
    /// [`SqliteOptions::migrate`], are ignored: the pool is yours, and so is migrating it).
    pub fn new_with(pool: SqlitePool, options: SqliteOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                path: pool_path(&pool),
                writer: tokio::sync::Mutex::new(()),
                appended: tokio::sync::Notify::new(),
                owner: format!("{}:{}", std::process::id(), Uuid::new_v4()),
                held: Mutex::new(HashSet::new()),
                options,
            }),
            pool,
        }
    }

    /// The connection pool, for read models and queries of your own in the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub(crate) fn held(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set is valid whatever a panicking holder was doing: it only inserts and removes.
        self.shared
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn append_batch(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        contract::check_append(stream, &events)?;
        let failed =
            |error: sqlx::Error| store_error(format!("append to stream `{stream}`"), error);
        let ids: Vec<String> = events
            .iter()
            .map(|event| event.event_id.to_string())
            .collect();
        // The batch travels as one JSON parameter, so that looking its ids up and inserting it
        // are one statement each whatever its size. Payload and metadata go as JSON strings
        // holding their text, which SQLite unwraps into exactly that text.
        let batch: Vec<(&str, &str, u32, &str, &str)> = events
            .iter()
            .zip(&ids)
            .map(|(event, id)| {
                (
                    id.as_str(),
                    event.event_type.as_str(),
                    event.schema_version,
                    event.payload.as_str(),
                    event.metadata.as_str(),
                )
            })
            .collect();
        let batch = serde_json::to_string(&batch).map_err(|error| {
            StoreError::backend(format!("encode a batch for stream `{stream}`"), error)
        })?;

        let _writer = self.shared.writer.lock().await;
        let fast = match events.as_slice() {
            [event] => self.append_one(stream, expected, event, &ids[0]).await?,
            _ => self.append_many(stream, expected, &events, &batch).await?,
        };
        if let Some(range) = fast {
            drop(_writer);
            self.shared.appended.notify_waiters();
            return Ok(AppendOutcome::Appended(range));
        }
        // Nothing written. Under contention that is mostly a conflict: tell it with one read,
        // outside the write lock, rather than with a write transaction.
        drop(_writer);
        if let Some(conflict) = self.plain_conflict(stream, expected, &batch).await? {
            return Err(conflict);
        }
        let _writer = self.shared.writer.lock().await;

        // IMMEDIATE takes SQLite's write lock now (waiting up to the busy timeout), so the checks
        // below and the insert see one state that no other writer can change in between.
        let mut transaction = begin_immediate(&self.pool).await.map_err(failed)?;

        let state = sqlx::query(include_str!("sql/append_state.sql"))
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(&batch)
            .fetch_one(&mut *transaction)
            .await
            .map_err(failed)?;
        // The idempotency check comes before the version check: a re-sent batch is not a conflict.
        if let Some(found) = Found::read(&state).map_err(failed)? {
            let range = previous_append(&mut transaction, stream, &events, &ids, found).await?;
            return Ok(AppendOutcome::AlreadyAppended(range));
        }
        let current_version: Option<i64> = state.try_get("current_version").map_err(failed)?;
        let last_position: i64 = state.try_get("last_position").map_err(failed)?;
        let last_recorded_at: Option<i64> = state.try_get("last_recorded_at").map_err(failed)?;

        let current = rows::stream_version(stream, current_version)?;
        if !expected.admits(current) {
            return Err(StoreError::Conflict {
                stream: stream.to_owned(),
                expected,
                actual: current,
            });
        }
        // Only rows written by hand can bring these near `i64::MAX`; refuse rather than overflow.
        let overflow = || {
            StoreError::backend(
                format!("append to stream `{stream}`"),
                rows::InvalidValue(
                    "the stream versions or log positions would exceed 2^63 - 1".to_owned(),
                ),
            )
        };
        let count = i64::try_from(events.len()).map_err(|_| overflow())?;
        let first_version = current_version
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(overflow)?;
        let first_position = last_position.checked_add(1).ok_or_else(overflow)?;
        let last = count - 1;
        let (last_version, last_sequence) = first_version
            .checked_add(last)
            .zip(first_position.checked_add(last))
            .ok_or_else(overflow)?;
        // The log's times never decrease, even when the system clock steps back, so that "as of
        // a time" is a prefix of every stream.
        let recorded_at = now_micros().max(last_recorded_at.unwrap_or(i64::MIN));
        sqlx::query(include_str!("sql/insert_batch.sql"))
            .bind(first_position)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(first_version)
            .bind(recorded_at)
            .bind(&batch)
            .execute(&mut *transaction)
            .await
            .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        drop(_writer);
        self.shared.appended.notify_waiters();

        // All four are at least 1: the casts are exact.
        Ok(AppendOutcome::Appended(AppendedRange {
            first_version: first_version as u64,
            last_version: last_version as u64,
            last_position: Position {
                transaction: first_position as u64,
                sequence: last_sequence as u64,
            },
        }))
    }

    /// The common case in one statement and one round trip: a single event appended to a stream
    /// in the expected state, with no reused id. The statement runs in its own transaction,
    /// which takes SQLite's write lock before it reads, like `BEGIN IMMEDIATE`. `None` when it
    /// wrote nothing because the expectation does not hold or a number would overflow, and when
    /// the event id is already stored: the general path then decides what happened (a re-sent
    /// batch, a conflict, an id used elsewhere), under the same in-process writer lock.
    async fn append_one(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        event: &NewEvent,
        event_id: &str,
    ) -> Result<Option<AppendedRange>, StoreError> {
        let (kind, exact) = match expected {
            ExpectedVersion::Any => ("any", 0),
            ExpectedVersion::NoStream => ("no_stream", 0),
            ExpectedVersion::StreamExists => ("stream_exists", 0),
            ExpectedVersion::Exact(version) => ("exact", saturating_i64(version)),
        };
        let inserted = sqlx::query(include_str!("sql/append_one.sql"))
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(kind)
            .bind(exact)
            .bind(event_id)
            .bind(&event.event_type)
            .bind(i64::from(event.schema_version))
            .bind(event.payload.as_str())
            .bind(event.metadata.as_str())
            .bind(now_micros())
            .fetch_optional(&self.pool)
            .await;
        let failed =
            |error: sqlx::Error| store_error(format!("append to stream `{stream}`"), error);
        let row = match inserted {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            Err(error) if is_unique_violation(&error) => return Ok(None),
            Err(error) => return Err(failed(error)),
        };
        let version: i64 = row.try_get(0).map_err(failed)?;
        let position: i64 = row.try_get(1).map_err(failed)?;
        let unsigned = |value: i64| {
            u64::try_from(value).map_err(|_| StoreError::CorruptRow {
                stream: stream.to_string(),
                stream_version: version,
                reason: "the append returned a negative version or position".to_owned(),
            })
        };
        Ok(Some(AppendedRange {
            first_version: unsigned(version)?,
            last_version: unsigned(version)?,
            last_position: Position {
                transaction: unsigned(position)?,
                sequence: unsigned(position)?,
            },
        }))
    }

    /// A batch of several events in one statement and one round trip, when the expectation names
    /// the stream's version (`Exact`, `NoStream`): the batch's versions are then known before it
    /// is written, and its positions follow from the last one inserted, so the statement need
    /// not return its rows. `None` (without a round trip for `Any` and `StreamExists`) when it
    /// wrote nothing or met a stored event id: the general path decides, as for one event.
    async fn append_many(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: &[NewEvent],
        batch: &str,
    ) -> Result<Option<AppendedRange>, StoreError> {
        let base = match expected {
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(version) => match i64::try_from(version) {
                Ok(version) => version,
                Err(_) => return Ok(None),
            },
            ExpectedVersion::Any | ExpectedVersion::StreamExists => return Ok(None),
        };
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let inserted = sqlx::query(include_str!("sql/append_many.sql"))
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(batch)
            .bind(now_micros())
            .bind(base)
            .bind(count)
            .execute(&self.pool)
            .await;
        let done = match inserted {
            Ok(done) => done,
            Err(error) if is_unique_violation(&error) => return Ok(None),
            Err(error) => {
                return Err(store_error(format!("append to stream `{stream}`"), error));
            }
        };
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let unexpected = |reason: String| {
            StoreError::backend(
                format!("append to stream `{stream}`"),
                rows::InvalidValue(reason),
            )
        };
        if done.rows_affected() != events.len() as u64 {
            return Err(unexpected(format!(
                "the append wrote {} of {} events",
                done.rows_affected(),
                events.len()
            )));
        }
        // Positions are consecutive from the batch's first, which is its transaction id.
        let last_position = done.last_insert_rowid();
        let first_position = last_position - (count - 1);
        let (Ok(first_position), Ok(last_position)) =
            (u64::try_from(first_position), u64::try_from(last_position))
        else {
            return Err(unexpected(
                "the append returned a negative position".to_owned(),
            ));
        };
        let first_version = base as u64 + 1;
        Ok(Some(AppendedRange {
            first_version,
            last_version: first_version + (count as u64 - 1),
            last_position: Position {
                transaction: first_position,
                sequence: last_position,
            },
        }))
    }

    /// After the one-statement path wrote nothing: `Some(conflict)` when none of the batch's ids
    /// is stored and the expectation fails on the stream's version as it is now, `None` when only
    /// the general path can tell (an id is stored: a re-send or a reused id; or the expectation
    /// holds now, or may hold later).
    ///
    /// Versions only grow, so an `Exact` or `NoStream` expectation that fails now failed when the
    /// statement ran too: the conflict is real, and reported with the version read now.
    async fn plain_conflict(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        batch: &str,
    ) -> Result<Option<StoreError>, StoreError> {
        if !matches!(
            expected,
            ExpectedVersion::Exact(_) | ExpectedVersion::NoStream
        ) {
            return Ok(None);
        }
        let failed =
            |error: sqlx::Error| store_error(format!("append to stream `{stream}`"), error);
        let row = sqlx::query(PLAIN_CONFLICT)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(batch)
            .fetch_one(&self.pool)
            .await
            .map_err(failed)?;
        let current: Option<i64> = row.try_get(0).map_err(failed)?;
        let stored: bool = row.try_get(1).map_err(failed)?;
        let current = rows::stream_version(stream, current)?;
        if stored || expected.admits(current) {
            return Ok(None);
        }
        Ok(Some(StoreError::Conflict {
            stream: stream.to_owned(),
            expected,
            actual: current,
        }))
    }

    async fn read_page(
        &self,
        stream: StreamKey<'_>,
        from_version: i64,
        until_version: i64,
        until_recorded_at: i64,
    ) -> Result<Page, StoreError> {
        let failed = |error: sqlx::Error| store_error(format!("read stream `{stream}`"), error);
        let row = sqlx::query(&READ_STREAM_PAGE)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(from_version)
            .bind(until_version)
            .bind(until_recorded_at)
            .bind(PAGE as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(failed)?;
        let rows: i64 = row.try_get("rows").map_err(failed)?;
        let last_version: Option<i64> = row.try_get("last_version").map_err(failed)?;
        let parsed = row
            .try_get::<&str, _>("page")
            .ok()
            .and_then(rows::page_events);
        let events = match parsed {
            Some(events) => events,
            // The page does not parse as JSON: read it row by row to name the unreadable row.
            None => sqlx::query(&format!(
                "SELECT {EVENT_COLUMNS} FROM es_events WHERE {READ_STREAM_FILTER} \
                 ORDER BY stream_version LIMIT ?7"
            ))
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(from_version)
            .bind(until_version)
            .bind(until_recorded_at)
            .bind(PAGE as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?
            .iter()
            .map(rows::recorded_event)
            .collect(),
        };
        Ok(Page {
            events: events.into(),
            full: rows >= PAGE as i64,
            last_version,
        })
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database| database.is_unique_violation())
}

/// The first of a batch's ids (in batch order) found stored, and where.
struct Found {
    batch_index: i64,
    position: i64,
    transaction: i64,
    stream: StreamKeyBuf,
    version: i64,
}

impl Found {
    fn read(row: &SqliteRow) -> Result<Option<Self>, sqlx::Error> {
        let Some(batch_index) = row.try_get::<Option<i64>, _>("batch_index")? else {
            return Ok(None);
        };
        Ok(Some(Self {
            batch_index,
            position: row.try_get("found_position")?,
            transaction: row.try_get("found_transaction")?,
            stream: StreamKeyBuf {
                tenant: row.try_get("found_tenant")?,
                stream_type: row.try_get("found_stream_type")?,
                id: row.try_get("found_stream_id")?,
            },
            version: row.try_get("found_version")?,
        }))
    }
}

/// After one of the batch's ids was found stored: the range of the very same batch appended
/// before (same ids in the same order, written by one append to this stream, nothing more), or
/// [`StoreError::DuplicateEventId`].
async fn previous_append(
    connection: &mut sqlx::SqliteConnection,
    stream: StreamKey<'_>,
    events: &[NewEvent],
    ids: &[String],
    found: Found,
) -> Result<AppendedRange, StoreError> {
    let failed = |error: sqlx::Error| store_error(format!("append to stream `{stream}`"), error);
    let event_id = usize::try_from(found.batch_index)
        .ok()
        .and_then(|index| events.get(index))
        .map_or(events[0].event_id, |event| event.event_id);
    let duplicate = || StoreError::DuplicateEventId {
        event_id,
        existing_stream: found.stream.clone(),
        existing_version: u64::try_from(found.version).unwrap_or(0),
    };
    // The same batch starts where its first event is stored, and that is where its append
    // started (a batch's transaction id is its first position).
    if found.batch_index != 0
        || found.stream.as_key() != stream
        || found.position != found.transaction
    {
        return Err(duplicate());
    }
    // A batch's events have consecutive positions from its transaction id: reading one more
    // than the batch's length tells whether the stored batch is longer.
    let stored = sqlx::query(STORED_BATCH)
        .bind(found.transaction)
        .bind(ids.len() as i64)
        .fetch_all(&mut *connection)
        .await
        .map_err(failed)?;
    let stored_ids = stored
        .iter()
        .map(|row| row.try_get::<String, _>("event_id"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    if stored_ids != ids {
        return Err(duplicate());
    }
    let Some(last) = stored.last() else {
        return Err(duplicate());
    };
    let last_version: i64 = last.try_get("stream_version").map_err(failed)?;
    let last_position: i64 = last.try_get("position").map_err(failed)?;
    let unsigned = |value: i64| {
        u64::try_from(value).map_err(|_| StoreError::CorruptRow {
            stream: stream.to_string(),
            stream_version: value,
            reason: "negative version or position".to_owned(),
        })
    };
    Ok(AppendedRange {
        first_version: unsigned(found.version)?,
        last_version: unsigned(last_version)?,
        last_position: Position {
            transaction: unsigned(found.transaction)?,
            sequence: unsigned(last_position)?,
        },
    })
}

/// The SQL bounds of a stream read: the last version and the latest recording time included.
pub(crate) fn bounds(until: Until) -> (i64, i64) {
    match until {
        Until::End => (i64::MAX, i64::MAX),
        Until::Version(version) => (saturating_i64(version), i64::MAX),
        Until::RecordedAt(time) => (i64::MAX, micros(time)),
    }
}

/// The state of a lazy stream read: the rows of the current page and where the next one starts.
struct Reading {
    next_version: i64,
    rows: VecDeque<Result<RecordedEvent, StoreError>>,
    finished: bool,
    events: u64,
    started: Instant,
}

impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let span = tracing::debug_span!(
            "es.sqlite.append",
            tenant = stream.tenant,
            stream_type = stream.stream_type,
            stream_id = stream.id,
            events = events.len(),
            %expected,
            outcome = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self
            .append_batch(stream, expected, events)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(AppendOutcome::Appended(_)) => "appended",
            Ok(AppendOutcome::AlreadyAppended(_)) => "already appended",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        span.record("outcome", outcome);
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        result
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        if let Err(error) = contract::check_stream(stream) {
            return Box::pin(futures_util::stream::iter([Err(error)]));
        }
        let span = tracing::debug_span!(
            "es.sqlite.read_stream",
            tenant = stream.tenant,
            stream_type = stream.stream_type,
            stream_id = stream.id,
            from_version,
            events = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        let (until_version, until_recorded_at) = bounds(until);
        let reading = Reading {
            next_version: saturating_i64(from_version.max(1)),
            rows: VecDeque::new(),
            finished: false,
            events: 0,
            started: Instant::now(),
        };
        Box::pin(futures_util::stream::unfold(reading, move |mut reading| {
            let span = span.clone();
            async move {
                loop {
                    if let Some(event) = reading.rows.pop_front() {
                        match &event {
                            Ok(_) => reading.events += 1,
                            // Nothing after an unreadable row is delivered: the reader stops here.
                            Err(_) => {
                                reading.rows.clear();
                                reading.finished = true;
                            }
                        }
                        return Some((event, reading));
                    }
                    if reading.finished {
                        span.record("events", reading.events);
                        span.record("elapsed_us", reading.started.elapsed().as_micros() as u64);
                        return None;
                    }
                    let page = self
                        .read_page(
                            stream,
                            reading.next_version,
                            until_version,
                            until_recorded_at,
                        )
                        .instrument(span.clone())
                        .await;
                    match page {
                        Ok(page) => {
                            let next = page.last_version;
                            reading.finished = !page.full || next.is_none();
                            reading.next_version =
                                next.map_or(i64::MAX, |version| version.saturating_add(1));
                            reading.rows = page.events;
                        }
                        Err(error) => {
                            reading.finished = true;
                            return Some((Err(error), reading));
                        }
                    }
                }
            }
        }))
    }

    async fn replay_stream<E, F>(
        &self,
        stream: StreamKey<'_>,
        from_version: u64,
        until: Until,
        visit: F,
    ) -> Result<u64, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        contract::check_stream(stream)?;
        crate::replay::replay_stream(&self.pool, stream, from_version, until, visit).await
    }

    async fn stream_version(&self, stream: StreamKey<'_>) -> Result<Option<u64>, StoreError> {
        contract::check_stream(stream)?;
        let version: Option<i64> = sqlx::query_scalar(STREAM_VERSION)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .fetch_one(&self.pool)
            .await
            .map_err(|error| {
                store_error(format!("read the version of stream `{stream}`"), error)
            })?;
        rows::stream_version(stream, version)
    }

    async fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let span = tracing::debug_span!(
            "es.sqlite.read_all",
            scope = %scope,
            %after,
            limit,
            events = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        let started = Instant::now();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let failed = |error: sqlx::Error| store_error(format!("read the log of {scope}"), error);
        let queries = log_queries(scope);
        let page = bind_log_filter(&queries.page, scope, after)
            .bind(limit)
            .fetch_one(&self.pool)
            .instrument(span.clone())
            .await
            .map_err(failed)?;
        let parsed = page
            .try_get::<&str, _>("page")
            .ok()
            .and_then(rows::page_events);
        let events = match parsed {
            Some(events) => events.into_iter().collect::<Result<Vec<_>, _>>()?,
            // The page does not parse as JSON: read it row by row to name the unreadable row.
            None => bind_log_filter(&queries.rows, scope, after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(failed)?
                .iter()
                .map(rows::recorded_event)
                .collect::<Result<Vec<_>, _>>()?,
        };
        span.record("events", events.len());
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(events)
    }

    async fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let row = sqlx::query(&FIND_EVENT)
            .bind(event_id.to_string())
            .bind(scope.tenant())
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| store_error(format!("find event {event_id}"), error))?;
        row.as_ref().map(rows::recorded_event).transpose()
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let stream = snapshot.stream();
        contract::check_snapshot_state(stream, snapshot.state.as_str())?;
        let _writer = self.shared.writer.lock().await;
        sqlx::query(
            "INSERT INTO es_snapshots (tenant, stream_type, stream_id, stream_version, state_version, \
               state, taken_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (stream_id, stream_type, tenant) DO UPDATE SET \
               stream_version = excluded.stream_version, state_version = excluded.state_version, \
               state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.stream_version >= es_snapshots.stream_version",
        )
        .bind(stream.tenant)
        .bind(stream.stream_type)
        .bind(stream.id)
        .bind(saturating_i64(snapshot.stream_version))
        .bind(i64::from(snapshot.state_version))
        .bind(snapshot.state.as_str())
        .bind(micros(snapshot.taken_at))
        .execute(&self.pool)
        .await
        .map_err(|error| store_error(format!("save a snapshot of stream `{stream}`"), error))?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: StreamKey<'_>) -> Result<Option<Snapshot>, StoreError> {
        contract::check_stream(stream)?;
        let row = sqlx::query(LOAD_SNAPSHOT)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| {
                store_error(format!("load the snapshot of stream `{stream}`"), error)
            })?;
        row.as_ref().map(rows::snapshot).transpose()
    }
}

/// Begins a `BEGIN IMMEDIATE` transaction on a pooled connection, in a task of its own.
///
/// sqlx 0.8's `begin_with` awaits once more after SQLite ran the `BEGIN`; a caller dropped at
/// that point (a timeout, an aborted task) would leave the connection in the pool inside a
/// transaction holding the write lock, and every later write would wait for it. In a task of its
/// own the begin always completes, and a transaction nobody receives is rolled back on drop.
pub(crate) async fn begin_immediate(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
        .await
        .unwrap_or_else(|error| Err(sqlx::Error::Io(std::io::Error::other(error))))
}
