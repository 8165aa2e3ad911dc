//! Reads: streams, the global log, events by id, snapshots; and turning rows into envelopes
//! without ever panicking on what the database holds.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use es_core::{
    EventStream, LogScope, Position, RawJson, RecordedEvent, Snapshot, StoreError, StreamKey,
    Tenant, Until,
};
use futures_core::Stream;
use futures_util::StreamExt;
use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::query::Query;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::store_error;
use crate::store::PgStore;

/// The longest pause between two looks while committed events are held back.
const HORIZON_POLL_MAX: Duration = Duration::from_millis(50);

/// How many decoded events a stream read under tenant isolation buffers ahead of its reader.
const ISOLATED_READ_BUFFER: usize = 256;

pub(crate) fn corrupt(
    stream: impl Display,
    stream_version: i64,
    reason: impl Into<String>,
) -> StoreError {
    StoreError::CorruptRow {
        stream: stream.to_string(),
        stream_version,
        reason: reason.into(),
    }
}

/// A stored stream version, which must be at least 1.
pub(crate) fn version(stored: i64, stream: impl Display) -> Result<u64, StoreError> {
    match u64::try_from(stored) {
        Ok(version) if version >= 1 => Ok(version),
        _ => Err(corrupt(
            stream,
            stored,
            "the stream version is not positive",
        )),
    }
}

/// A stored position: the writing transaction's id (as text, since sqlx has no `xid8` type)
/// and the sequence number.
pub(crate) fn position(
    transaction: &str,
    sequence: i64,
    stream: impl Display,
    stream_version: i64,
) -> Result<Position, StoreError> {
    let Ok(transaction) = transaction.parse::<u64>() else {
        return Err(corrupt(
            stream,
            stream_version,
            "the transaction id is not a 64-bit number",
        ));
    };
    let Ok(sequence) = u64::try_from(sequence) else {
        return Err(corrupt(
            stream,
            stream_version,
            "the global position is negative",
        ));
    };
    Ok(Position {
        transaction,
        sequence,
    })
}

/// A position as the two parameters the statements compare `(transaction_id, position)` with.
/// Sequences beyond `i64` cannot be stored, so they clamp to the largest one.
pub(crate) fn position_params(position: Position) -> (String, i64) {
    (
        position.transaction.to_string(),
        i64::try_from(position.sequence).unwrap_or(i64::MAX),
    )
}

/// Whether `scope` names a tenant no stream can belong to (empty, too long, holding NUL): its
/// log is empty, as in every store, without asking PostgreSQL (which refuses NUL in text).
pub(crate) fn names_no_tenant(scope: LogScope<'_>) -> bool {
    matches!(scope, LogScope::Tenant(tenant) if Tenant::new(tenant).is_err())
}

/// A row of the columns in `sql::EVENT_COLUMNS` as an envelope. Any value the envelope cannot
/// hold is a [`StoreError::CorruptRow`] naming the stream and version; `requested` names the
/// stream when the row's own key is unreadable.
pub(crate) fn decode_event(
    row: &PgRow,
    requested: &dyn Display,
) -> Result<RecordedEvent, StoreError> {
    // The statements cast every column to the type read here (`sql::EVENT_COLUMNS`), so the
    // per-value type check of `try_get` (a comparison of type descriptions, most of the cost of
    // reading a row) is skipped; a value that does not decode is still an error, never a panic.
    // The stream key and version first, so later errors can name them.
    let unreadable = |what: &str, e: sqlx::Error| {
        corrupt(requested, 0, format!("the {what} is unreadable: {e}"))
    };
    let tenant: String = row
        .try_get_unchecked(0)
        .map_err(|e| unreadable("tenant", e))?;
    let stream_type: String = row
        .try_get_unchecked(1)
        .map_err(|e| unreadable("stream type", e))?;
    let stream_id: String = row
        .try_get_unchecked(2)
        .map_err(|e| unreadable("stream id", e))?;
    let stream = StreamKey {
        tenant: &tenant,
        stream_type: &stream_type,
        id: &stream_id,
    };
    let stored_version: i64 = row
        .try_get_unchecked(3)
        .map_err(|e| corrupt(stream, 0, format!("the stream version is unreadable: {e}")))?;
    let column =
        |name: &str, e: sqlx::Error| corrupt(stream, stored_version, format!("column {name}: {e}"));
    let stream_version = version(stored_version, stream)?;
    let sequence: i64 = row
        .try_get_unchecked(4)
        .map_err(|e| column("position", e))?;
    let transaction: &str = row
        .try_get_unchecked(5)
        .map_err(|e| column("transaction_id", e))?;
    let position = position(transaction, sequence, stream, stored_version)?;
    let schema_version: i64 = row
        .try_get_unchecked(8)
        .map_err(|e| column("schema_version", e))?;
    let Ok(schema_version) = u32::try_from(schema_version) else {
        return Err(corrupt(
            stream,
            stored_version,
            "the schema version is not a 32-bit unsigned number",
        ));
    };
    let payload: String = row.try_get_unchecked(9).map_err(|e| column("payload", e))?;
    let metadata: String = row
        .try_get_unchecked(10)
        .map_err(|e| column("metadata", e))?;
    let event_id = row
        .try_get_unchecked(6)
        .map_err(|e| column("event_id", e))?;
    let event_type = row
        .try_get_unchecked(7)
        .map_err(|e| column("event_type", e))?;
    let recorded_at = row
        .try_get_unchecked(11)
        .map_err(|e| column("recorded_at", e))?;
    Ok(RecordedEvent {
        tenant,
        stream_type,
        stream_id,
        stream_version,
        position,
        event_id,
        event_type,
        schema_version,
        payload: RawJson::from_string(payload),
        metadata: RawJson::from_string(metadata),
        recorded_at,
    })
}

pub(crate) fn read_stream<'a>(
    store: &'a PgStore,
    stream: StreamKey<'a>,
    from_version: u64,
    until: Until,
) -> EventStream<'a> {
    let span = tracing::debug_span!(
        "es.pg.read_stream",
        schema = store.schema(),
        stream = %stream,
        from_version,
        events = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    if let Err(error) = es_core::contract::check_stream(stream) {
        return Box::pin(futures_util::stream::iter([Err(error)]));
    }
    let events: EventStream<'a> = if store.isolates_tenants() {
        isolated_read_stream(store.clone(), stream, from_version, until, span.clone())
    } else {
        let inner = &store.inner;
        let query = stream_range(inner.sql.read_stream(until), stream, from_version, until);
        // `fetch` streams rows as the server sends them: memory stays flat however long the
        // stream.
        Box::pin(query.fetch(&inner.pool).map(move |row| match row {
            Ok(row) => decode_event(&row, &stream),
            Err(error) => Err(store_error(format!("read stream `{stream}`"), error)),
        }))
    };
    Box::pin(Traced {
        events,
        span,
        started: Instant::now(),
        count: 0,
        finished: false,
    })
}

/// A stream read in a transaction scoped to the stream's tenant. The transaction lives in a task
/// of its own that streams the rows to the reader through a bounded channel, so memory stays
/// flat; dropping the reader ends the task, and the task's end rolls the transaction back.
fn isolated_read_stream<'a>(
    store: PgStore,
    stream: StreamKey<'a>,
    from_version: u64,
    until: Until,
    span: tracing::Span,
) -> EventStream<'a> {
    let owned = stream.to_owned();
    let started = async move {
        let (sender, receiver) = tokio::sync::mpsc::channel(ISOLATED_READ_BUFFER);
        let read = async move {
            let stream = owned.as_key();
            let operation = || format!("read stream `{stream}`");
            let mut session = match store.session(stream.tenant).await {
                Ok(session) => session,
                Err(error) => {
                    let _ = sender.send(Err(store_error(operation(), error))).await;
                    return;
                }
            };
            let query = stream_range(
                store.inner.sql.read_stream(until),
                stream,
                from_version,
                until,
            );
            let mut rows = query.fetch(session.connection());
            while let Some(row) = rows.next().await {
                let event = row
                    .map_err(|error| store_error(operation(), error))
                    .and_then(|row| decode_event(&row, &stream));
                let failed = event.is_err();
                if sender.send(event).await.is_err() || failed {
                    return;
                }
            }
        };
        tokio::spawn(read.instrument(span));
        tokio_stream_of(receiver)
    };
    Box::pin(futures_util::stream::once(started).flatten())
}

/// The receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// `sql` (a stream read: `$1..$3` the stream's key, `$4` the first version, `$5` the bound of
/// `until` if any) with its parameters bound.
pub(crate) fn stream_range<'q>(
    sql: &'q str,
    stream: StreamKey<'q>,
    from_version: u64,
    until: Until,
) -> Query<'q, Postgres, PgArguments> {
    // Versions start at 1; one beyond i64 matches nothing.
    let from = i64::try_from(from_version.max(1)).unwrap_or(i64::MAX);
    let query = sqlx::query(sql)
        .bind(stream.tenant)
        .bind(stream.stream_type)
        .bind(stream.id)
        .bind(from);
    match until {
        Until::End => query,
        Until::Version(last) => query.bind(i64::try_from(last).unwrap_or(i64::MAX)),
        Until::RecordedAt(time) => query.bind(time),
    }
}

/// A stream read that records how many events it yielded and how long it took on its span, when
/// it ends or is dropped.
struct Traced<'a> {
    events: EventStream<'a>,
    span: tracing::Span,
    started: Instant,
    count: u64,
    finished: bool,
}

impl Traced<'_> {
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.span.record("events", self.count);
            self.span
                .record("elapsed_us", self.started.elapsed().as_micros() as u64);
        }
    }
}

impl Stream for Traced<'_> {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = {
            let _entered = this.span.enter();
            this.events.as_mut().poll_next(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.count += 1,
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }
}

impl Drop for Traced<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

pub(crate) async fn stream_version(
    store: &PgStore,
    stream: StreamKey<'_>,
) -> Result<Option<u64>, StoreError> {
    es_core::contract::check_stream(stream)?;
    let error = |e| store_error(format!("read the version of stream `{stream}`"), e);
    let mut session = store.session(stream.tenant).await.map_err(error)?;
    let current: Option<i64> = sqlx::query_scalar(&store.inner.sql.stream_version)
        .bind(stream.tenant)
        .bind(stream.stream_type)
        .bind(stream.id)
        .fetch_one(session.connection())
        .await
        .map_err(error)?;
    session.finish().await.map_err(error)?;
    current.map(|v| version(v, stream)).transpose()
}

pub(crate) async fn read_all(
    store: &PgStore,
    scope: LogScope<'_>,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let span = tracing::debug_span!(
        "es.pg.read_all",
        schema = store.schema(),
        scope = %scope,
        after = %after,
        limit,
        events = tracing::field::Empty,
        looks = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let deadline = started + store.horizon_wait();
        let mut pause = Duration::from_millis(1);
        let mut looks = 0u32;
        let events = loop {
            looks += 1;
            let (events, held_back) = read_all_once(store, scope, after, limit).await?;
            // A short page while committed events wait behind an older running transaction is
            // not the end of the log: look again shortly, up to the horizon wait.
            let now = Instant::now();
            if events.len() >= limit || !held_back || now >= deadline {
                break events;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(HORIZON_POLL_MAX);
        };
        let span = tracing::Span::current();
        span.record("events", events.len());
        span.record("looks", looks);
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(events)
    }
    .instrument(span)
    .await
}

/// One page below the horizon, and whether committed events after `after` are held back.
async fn read_all_once(
    store: &PgStore,
    scope: LogScope<'_>,
    after: Position,
    limit: usize,
) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
    if limit == 0 || names_no_tenant(scope) {
        return Ok((Vec::new(), false));
    }
    let error = |e| store_error(format!("read the global log of {scope}"), e);
    let (transaction, sequence) = position_params(after);
    let mut session = store.scope_session(scope).await.map_err(error)?;
    let one_tenant = scope.tenant().is_some();
    let mut query = sqlx::query(store.inner.sql.read_all(one_tenant))
        // One tenant's log is planned for the tenant it reads (see `Sql::read_all`).
        .persistent(!one_tenant)
        .bind(transaction)
        .bind(sequence)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    if let LogScope::Tenant(tenant) = scope {
        query = query.bind(tenant);
    }
    let rows = query.fetch_all(session.connection()).await.map_err(error)?;
    session.finish().await.map_err(error)?;
    let mut held_back = false;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        held_back = row.try_get(12).map_err(error)?;
        // The page's one row when it is empty: no event.
        let event_id: Option<Uuid> = row.try_get(6).map_err(error)?;
        if event_id.is_some() {
            events.push(decode_event(row, &scope)?);
        }
    }
    Ok((events, held_back))
}

pub(crate) async fn find_event(
    store: &PgStore,
    scope: LogScope<'_>,
    event_id: Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let error = |e| store_error(format!("find event {event_id}"), e);
    let mut session = store.scope_session(scope).await.map_err(error)?;
    let row = sqlx::query(&store.inner.sql.find_event)
        .bind(event_id)
        .bind(scope.tenant())
        .fetch_optional(session.connection())
        .await
        .map_err(error)?;
    session.finish().await.map_err(error)?;
    row.map(|row| decode_event(&row, &event_id)).transpose()
}

pub(crate) async fn save_snapshot(store: &PgStore, snapshot: &Snapshot) -> Result<(), StoreError> {
    let stream = snapshot.stream();
    es_core::contract::check_snapshot_state(stream, snapshot.state.as_str())?;
    let operation = || format!("save a snapshot of stream `{stream}`");
    let Ok(stream_version) = i64::try_from(snapshot.stream_version) else {
        return Err(StoreError::backend(
            operation(),
            "the stream version exceeds PostgreSQL's bigint",
        ));
    };
    let mut session = store
        .session(stream.tenant)
        .await
        .map_err(|e| store_error(operation(), e))?;
    let saved = sqlx::query(&store.inner.sql.save_snapshot)
        .bind(stream.tenant)
        .bind(stream.stream_type)
        .bind(stream.id)
        .bind(stream_version)
        .bind(i64::from(snapshot.state_version))
        .bind(snapshot.state.as_str())
        .bind(snapshot.taken_at)
        .execute(session.connection())
        .await;
    match saved {
        Ok(_) => {}
        // The contract refuses every state `jsonb` cannot hold; should PostgreSQL refuse one
        // all the same, name the SQLSTATE only: the server's text may quote the state.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("22P02" | "22P05" | "22021")) =>
        {
            return Err(StoreError::backend(
                operation(),
                format!(
                    "PostgreSQL refused the snapshot state (SQLSTATE {})",
                    db.code().unwrap_or_default()
                ),
            ));
        }
        Err(error) => return Err(store_error(operation(), error)),
    }
    session
        .finish()
        .await
        .map_err(|e| store_error(operation(), e))
}

pub(crate) async fn load_snapshot(
    store: &PgStore,
    stream: StreamKey<'_>,
) -> Result<Option<Snapshot>, StoreError> {
    es_core::contract::check_stream(stream)?;
    let operation = || format!("load the snapshot of stream `{stream}`");
    let mut session = store
        .session(stream.tenant)
        .await
        .map_err(|e| store_error(operation(), e))?;
    let row = sqlx::query(&store.inner.sql.load_snapshot)
        .bind(stream.tenant)
        .bind(stream.stream_type)
        .bind(stream.id)
        .fetch_optional(session.connection())
        .await
        .map_err(|e| store_error(operation(), e))?;
    session
        .finish()
        .await
        .map_err(|e| store_error(operation(), e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored_version: i64 = row.try_get(0).map_err(|e| {
        corrupt(
            stream,
            0,
            format!("the snapshot's stream version is unreadable: {e}"),
        )
    })?;
    let column = |name: &str, e: sqlx::Error| {
        corrupt(
            stream,
            stored_version,
            format!("snapshot column {name}: {e}"),
        )
    };
    let Ok(stream_version) = u64::try_from(stored_version) else {
        return Err(corrupt(
            stream,
            stored_version,
            "the snapshot's stream version is negative",
        ));
    };
    let state_version: i64 = row.try_get(1).map_err(|e| column("state_version", e))?;
    let Ok(state_version) = u32::try_from(state_version) else {
        return Err(corrupt(
            stream,
            stored_version,
            "the snapshot's state version is not a 32-bit unsigned number",
        ));
    };
    let state: String = row.try_get(2).map_err(|e| column("state", e))?;
    Ok(Some(Snapshot {
        tenant: stream.tenant.to_owned(),
        stream_type: stream.stream_type.to_owned(),
        stream_id: stream.id.to_owned(),
        stream_version,
        state_version,
        state: RawJson::from_string(state),
        taken_at: row.try_get(3).map_err(|e| column("taken_at", e))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_numbers_out_of_range_are_corrupt_rows_not_panics() {
        let stream = StreamKey::new("order", "s").in_tenant("acme");
        assert_eq!(version(3, stream).unwrap(), 3);
        for bad in [0, -1, i64::MIN] {
            match version(bad, stream) {
                Err(StoreError::CorruptRow {
                    stream,
                    stream_version,
                    ..
                }) => assert_eq!((stream.as_str(), stream_version), ("acme:order/s", bad)),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            position("18446744073709551615", 7, stream, 1).unwrap(),
            Position {
                transaction: u64::MAX,
                sequence: 7
            }
        );
        for (transaction, sequence) in [("x", 7), ("-1", 7), ("5", -7)] {
            assert!(matches!(
                position(transaction, sequence, stream, 1),
                Err(StoreError::CorruptRow { .. })
            ));
        }
    }

    #[test]
    fn positions_bind_losslessly_or_clamp() {
        let max = Position {
            transaction: u64::MAX,
            sequence: u64::MAX,
        };
        assert_eq!(position_params(max), (u64::MAX.to_string(), i64::MAX));
        assert_eq!(position_params(Position::START), ("0".to_owned(), 0));
    }

    #[test]
    fn scopes_of_tenants_no_stream_has_are_empty_without_a_query() {
        assert!(names_no_tenant(LogScope::Tenant("")));
        assert!(names_no_tenant(LogScope::Tenant("a\0b")));
        assert!(!names_no_tenant(LogScope::Tenant("acme")));
        assert!(!names_no_tenant(LogScope::AllTenants));
    }
}
