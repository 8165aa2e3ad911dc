//! [`EventStore::replay_stream`](es_core::EventStore::replay_stream) on PostgreSQL: the columns a
//! load needs, streamed, each event borrowed from its row.

use std::time::Instant;

use es_core::{ReplayedEvent, StoreError, StreamKey, Until};
use futures_util::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::Instrument;

use crate::error::store_error;
use crate::read::{corrupt, stream_range, version};
use crate::store::PgStore;

/// Replays `stream` from `from_version` up to `until` into `visit`.
pub(crate) async fn replay_stream<E, F>(
    store: &PgStore,
    stream: StreamKey<'_>,
    from_version: u64,
    until: Until,
    mut visit: F,
) -> Result<u64, E>
where
    E: From<StoreError> + Send,
    F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
{
    let span = tracing::debug_span!(
        "es.pg.replay_stream",
        schema = store.schema(),
        stream = %stream,
        from_version,
        events = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        es_core::contract::check_stream(stream)?;
        let started = Instant::now();
        let error = |e| store_error(format!("read stream `{stream}`"), e);
        let mut session = store.session(stream.tenant).await.map_err(error)?;
        let query = stream_range(store.inner.sql.replay(until), stream, from_version, until);
        // Streamed as the server sends rows: memory stays flat however long the stream.
        let mut rows = query.fetch(session.connection());
        let mut replayed = 0;
        while let Some(row) = rows.try_next().await.map_err(error)? {
            visit(event(&row, stream)?)?;
            replayed += 1;
        }
        drop(rows);
        session.finish().await.map_err(error)?;
        let span = tracing::Span::current();
        span.record("events", replayed);
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(replayed)
    }
    .instrument(span)
    .await
}

/// A row of `Sql::replay` as an event. The statement fixes every column's type, so the per-value
/// type check of `try_get` is skipped; a value that does not decode is still an error.
fn event<'r>(row: &'r PgRow, stream: StreamKey<'_>) -> Result<ReplayedEvent<'r>, StoreError> {
    let stored_version: i64 = row.try_get_unchecked(0).map_err(|error| {
        corrupt(
            stream,
            0,
            format!("the stream version is unreadable: {error}"),
        )
    })?;
    let column = |name: &str, error: sqlx::Error| {
        corrupt(stream, stored_version, format!("column {name}: {error}"))
    };
    let schema_version: i64 = row
        .try_get_unchecked(2)
        .map_err(|e| column("schema_version", e))?;
    let Ok(schema_version) = u32::try_from(schema_version) else {
        return Err(corrupt(
            stream,
            stored_version,
            "the schema version is not a 32-bit unsigned number",
        ));
    };
    Ok(ReplayedEvent {
        stream_version: version(stored_version, stream)?,
        event_type: row
            .try_get_unchecked(1)
            .map_err(|e| column("event_type", e))?,
        schema_version,
        payload: row.try_get_unchecked(3).map_err(|e| column("payload", e))?,
    })
}
