//! Reads: streams, the global log, snapshots; and turning rows into envelopes without ever
//! panicking on what the database holds.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use es_core::{EventStream, Position, RawJson, RecordedEvent, Snapshot, StoreError, Until};
use futures_core::Stream;
use futures_util::StreamExt;
use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::query::Query;
use tracing::Instrument;

use crate::store::PgStore;

/// The longest pause between two looks while committed events are held back.
const HORIZON_POLL_MAX: Duration = Duration::from_millis(50);

pub(crate) fn corrupt(
    stream_id: &str,
    stream_version: i64,
    reason: impl Into<String>,
) -> StoreError {
    StoreError::CorruptRow {
        stream_id: stream_id.to_owned(),
        stream_version,
        reason: reason.into(),
    }
}

/// A stored stream version, which must be at least 1.
pub(crate) fn version(stored: i64, stream_id: &str) -> Result<u64, StoreError> {
    u64::try_from(stored)
        .ok()
        .filter(|&version| version >= 1)
        .ok_or_else(|| corrupt(stream_id, stored, "the stream version is not positive"))
}

/// A stored position: the writing transaction's id (as text, since sqlx has no `xid8` type)
/// and the sequence number.
pub(crate) fn position(
    transaction: &str,
    sequence: i64,
    stream_id: &str,
    stream_version: i64,
) -> Result<Position, StoreError> {
    let transaction = transaction.parse::<u64>().map_err(|_| {
        corrupt(
            stream_id,
            stream_version,
            "the transaction id is not a 64-bit number",
        )
    })?;
    let sequence = u64::try_from(sequence)
        .map_err(|_| corrupt(stream_id, stream_version, "the global position is negative"))?;
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

/// A row of the columns in `sql::EVENT_COLUMNS` as an envelope. Any value the
/// envelope cannot hold is a [`StoreError::CorruptRow`] naming the stream and version.
pub(crate) fn decode_event(
    row: &PgRow,
    requested_stream: &str,
) -> Result<RecordedEvent, StoreError> {
    // The statements cast every column to the type read here (`sql::EVENT_COLUMNS`), so the
    // per-value type check of `try_get` (a comparison of type descriptions, most of the cost of
    // reading a row) is skipped; a value that does not decode is still an error, never a panic.
    // Stream and version first, so later errors can name them.
    let stream_id: String = row.try_get_unchecked(1).map_err(|e| {
        corrupt(
            requested_stream,
            0,
            format!("the stream id is unreadable: {e}"),
        )
    })?;
    let stored_version: i64 = row.try_get_unchecked(2).map_err(|e| {
        corrupt(
            &stream_id,
            0,
            format!("the stream version is unreadable: {e}"),
        )
    })?;
    let column = |name: &str, e: sqlx::Error| {
        corrupt(&stream_id, stored_version, format!("column {name}: {e}"))
    };
    let stream_version = version(stored_version, &stream_id)?;
    let sequence: i64 = row
        .try_get_unchecked(3)
        .map_err(|e| column("position", e))?;
    let transaction: &str = row
        .try_get_unchecked(4)
        .map_err(|e| column("transaction_id", e))?;
    let schema_version: i64 = row
        .try_get_unchecked(7)
        .map_err(|e| column("schema_version", e))?;
    let schema_version = u32::try_from(schema_version).map_err(|_| {
        corrupt(
            &stream_id,
            stored_version,
            "the schema version is not a 32-bit unsigned number",
        )
    })?;
    let payload: String = row.try_get_unchecked(8).map_err(|e| column("payload", e))?;
    let metadata: String = row
        .try_get_unchecked(9)
        .map_err(|e| column("metadata", e))?;
    Ok(RecordedEvent {
        stream_type: row
            .try_get_unchecked(0)
            .map_err(|e| column("stream_type", e))?,
        position: position(transaction, sequence, &stream_id, stored_version)?,
        event_id: row
            .try_get_unchecked(5)
            .map_err(|e| column("event_id", e))?,
        event_type: row
            .try_get_unchecked(6)
            .map_err(|e| column("event_type", e))?,
        schema_version,
        payload: RawJson::from_string(payload),
        metadata: RawJson::from_string(metadata),
        recorded_at: row
            .try_get_unchecked(10)
            .map_err(|e| column("recorded_at", e))?,
        stream_version,
        stream_id,
    })
}

pub(crate) fn read_stream<'a>(
    store: &'a PgStore,
    stream_id: &'a str,
    from_version: u64,
    until: Until,
) -> EventStream<'a> {
    let span = tracing::debug_span!(
        "es.pg.read_stream",
        schema = store.schema(),
        stream_id,
        from_version,
        events = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    let inner = &store.inner;
    let query = stream_range(inner.sql.read_stream(until), stream_id, from_version, until);
    // `fetch` streams rows as the server sends them: memory stays flat however long the stream.
    let events = query.fetch(&inner.pool).map(move |row| match row {
        Ok(row) => decode_event(&row, stream_id),
        Err(error) => Err(StoreError::backend(
            format!("read stream `{stream_id}`"),
            error,
        )),
    });
    Box::pin(Traced {
        events: Box::pin(events),
        span,
        started: Instant::now(),
        count: 0,
        finished: false,
    })
}

/// `sql` (a stream read: `$1` stream, `$2` first version, `$3` the bound of `until` if any)
/// with its parameters bound.
pub(crate) fn stream_range<'q>(
    sql: &'q str,
    stream_id: &'q str,
    from_version: u64,
    until: Until,
) -> Query<'q, Postgres, PgArguments> {
    // Versions start at 1; one beyond i64 matches nothing.
    let from = i64::try_from(from_version.max(1)).unwrap_or(i64::MAX);
    let query = sqlx::query(sql).bind(stream_id).bind(from);
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
    stream_id: &str,
) -> Result<Option<u64>, StoreError> {
    let current: Option<i64> = sqlx::query_scalar(&store.inner.sql.stream_version)
        .bind(stream_id)
        .fetch_one(&store.inner.pool)
        .await
        .map_err(|e| StoreError::backend(format!("read the version of stream `{stream_id}`"), e))?;
    current.map(|v| version(v, stream_id)).transpose()
}

pub(crate) async fn read_all(
    store: &PgStore,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let span = tracing::debug_span!(
        "es.pg.read_all",
        schema = store.schema(),
        after = %after,
        limit,
        events = tracing::field::Empty,
        looks = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let deadline = started + store.inner.horizon_wait;
        let mut pause = Duration::from_millis(1);
        let mut looks = 0u32;
        let events = loop {
            looks += 1;
            let (events, held_back) = read_all_once(store, after, limit).await?;
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
    after: Position,
    limit: usize,
) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
    if limit == 0 {
        return Ok((Vec::new(), false));
    }
    let (transaction, sequence) = position_params(after);
    let rows = sqlx::query(&store.inner.sql.read_all)
        .bind(transaction)
        .bind(sequence)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&store.inner.pool)
        .await
        .map_err(|e| StoreError::backend("read the global log", e))?;
    let mut held_back = false;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        held_back = row
            .try_get(11)
            .map_err(|e| StoreError::backend("read the global log", e))?;
        // The page's one row when it is empty: no event.
        let stream_id: Option<String> = row
            .try_get(1)
            .map_err(|e| StoreError::backend("read the global log", e))?;
        if let Some(stream_id) = stream_id {
            events.push(decode_event(row, &stream_id)?);
        }
    }
    Ok((events, held_back))
}

pub(crate) async fn save_snapshot(store: &PgStore, snapshot: &Snapshot) -> Result<(), StoreError> {
    let operation = || format!("save a snapshot of stream `{}`", snapshot.stream_id);
    let stream_version = i64::try_from(snapshot.stream_version).map_err(|_| {
        StoreError::backend(
            operation(),
            "the stream version exceeds PostgreSQL's bigint",
        )
    })?;
    sqlx::query(&store.inner.sql.save_snapshot)
        .bind(&snapshot.stream_id)
        .bind(&snapshot.stream_type)
        .bind(stream_version)
        .bind(i64::from(snapshot.state_version))
        .bind(snapshot.state.as_str())
        .bind(snapshot.taken_at)
        .execute(&store.inner.pool)
        .await
        .map_err(|e| StoreError::backend(operation(), e))?;
    Ok(())
}

pub(crate) async fn load_snapshot(
    store: &PgStore,
    stream_id: &str,
) -> Result<Option<Snapshot>, StoreError> {
    let operation = || format!("load the snapshot of stream `{stream_id}`");
    let Some(row) = sqlx::query(&store.inner.sql.load_snapshot)
        .bind(stream_id)
        .fetch_optional(&store.inner.pool)
        .await
        .map_err(|e| StoreError::backend(operation(), e))?
    else {
        return Ok(None);
    };
    let stored_version: i64 = row
        .try_get(1)
        .map_err(|e| StoreError::backend(operation(), e))?;
    let column = |name: &str, e: sqlx::Error| {
        corrupt(
            stream_id,
            stored_version,
            format!("snapshot column {name}: {e}"),
        )
    };
    let stream_version = u64::try_from(stored_version).map_err(|_| {
        corrupt(
            stream_id,
            stored_version,
            "the snapshot's stream version is negative",
        )
    })?;
    let state_version: i64 = row.try_get(2).map_err(|e| column("state_version", e))?;
    let state_version = u32::try_from(state_version).map_err(|_| {
        corrupt(
            stream_id,
            stored_version,
            "the snapshot's state version is not a 32-bit unsigned number",
        )
    })?;
    let state: String = row.try_get(3).map_err(|e| column("state", e))?;
    Ok(Some(Snapshot {
        stream_type: row.try_get(0).map_err(|e| column("stream_type", e))?,
        stream_id: stream_id.to_owned(),
        stream_version,
        state_version,
        state: RawJson::from_string(state),
        taken_at: row.try_get(4).map_err(|e| column("taken_at", e))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_numbers_out_of_range_are_corrupt_rows_not_panics() {
        assert_eq!(version(3, "s").unwrap(), 3);
        for bad in [0, -1, i64::MIN] {
            match version(bad, "s") {
                Err(StoreError::CorruptRow {
                    stream_id,
                    stream_version,
                    ..
                }) => assert_eq!((stream_id.as_str(), stream_version), ("s", bad)),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            position("18446744073709551615", 7, "s", 1).unwrap(),
            Position {
                transaction: u64::MAX,
                sequence: 7
            }
        );
        assert!(matches!(
            position("x", 7, "s", 1),
            Err(StoreError::CorruptRow { .. })
        ));
        assert!(matches!(
            position("-1", 7, "s", 1),
            Err(StoreError::CorruptRow { .. })
        ));
        assert!(matches!(
            position("5", -7, "s", 1),
            Err(StoreError::CorruptRow { .. })
        ));
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
}
