//! [`EventStore::replay_stream`](es_core::EventStore::replay_stream) on PostgreSQL: the columns a
//! load needs, streamed, each event borrowed from its row.

use std::time::Instant;

use es_core::{ReplayedEvent, StoreError, Until};
use futures_util::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tracing::Instrument;

use crate::read::{corrupt, stream_range, version};
use crate::store::PgStore;

/// Replays `stream_id` from `from_version` up to `until` into `visit`.
pub(crate) async fn replay_stream<E, F>(
    store: &PgStore,
    stream_id: &str,
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
        stream_id,
        from_version,
        events = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let inner = &store.inner;
        let query = stream_range(inner.sql.replay(until), stream_id, from_version, until);
        // Streamed as the server sends rows: memory stays flat however long the stream.
        let mut rows = query.fetch(&inner.pool);
        let mut replayed = 0;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|error| StoreError::backend(format!("read stream `{stream_id}`"), error))?
        {
            visit(event(&row, stream_id)?)?;
            replayed += 1;
        }
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
fn event<'r>(row: &'r PgRow, stream_id: &str) -> Result<ReplayedEvent<'r>, StoreError> {
    let stored_version: i64 = row.try_get_unchecked(1).map_err(|error| {
        corrupt(
            stream_id,
            0,
            format!("the stream version is unreadable: {error}"),
        )
    })?;
    let column = |name: &str, error: sqlx::Error| {
        corrupt(stream_id, stored_version, format!("column {name}: {error}"))
    };
    let schema_version: i64 = row
        .try_get_unchecked(3)
        .map_err(|e| column("schema_version", e))?;
    Ok(ReplayedEvent {
        stream_type: row
            .try_get_unchecked(0)
            .map_err(|e| column("stream_type", e))?,
        stream_version: version(stored_version, stream_id)?,
        event_type: row
            .try_get_unchecked(2)
            .map_err(|e| column("event_type", e))?,
        schema_version: u32::try_from(schema_version).map_err(|_| {
            corrupt(
                stream_id,
                stored_version,
                "the schema version is not a 32-bit unsigned number",
            )
        })?,
        payload: row.try_get_unchecked(4).map_err(|e| column("payload", e))?,
    })
}
