//! [`EventStore::replay_stream`](es_core::EventStore::replay_stream) on SQLite: what a load
//! reads, a page at a time, each page one text value whose payloads are the stored text itself.
//!
//! Why not rows: sqlx copies every column of every row into an allocation of its own, which cost
//! more than the fold. Why not `json_array(.., payload)` as `read_stream` pages do: that quotes
//! each payload as a JSON string, which the reader then has to unescape into a copy. Payloads
//! are valid JSON (the table checks `json_valid`), so they are spliced in as they are and read
//! back as borrowed raw JSON.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Instant;

use es_core::{ReplayedEvent, StoreError, StreamKey, Until};
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;
use tracing::Instrument;

use crate::error::store_error;
use crate::rows::{event_version, saturating_i64, version_u32};
use crate::store::bounds;

/// How many events one query reads: as many as a page of `read_stream`.
const PAGE: i64 = crate::store::PAGE as i64;

/// The events of a replay: `?1` tenant, `?2` stream type, `?3` stream id, `?4`..`?5` versions,
/// `?6` latest recording time, `?7` the page size.
const PAGE_ROWS: &str = "SELECT stream_version, event_type, schema_version, payload \
     FROM es_events \
     WHERE tenant = ?1 AND stream_type = ?2 AND stream_id = ?3 \
       AND stream_version BETWEEN ?4 AND ?5 AND recorded_at <= ?6 \
     ORDER BY stream_version LIMIT ?7";

/// A page as one JSON text, `[[stream_version, event_type, schema_version, payload], ...]`, with
/// its row count and last version. An empty page has no text.
pub(crate) static PAGE_TEXT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT '[' || group_concat('[' || stream_version || ',' || json_quote(event_type) \
           || ',' || schema_version || ',' || payload || ']', ',' ORDER BY stream_version) \
           || ']' AS page, \
           count(*) AS rows, max(stream_version) AS last_version \
         FROM ({PAGE_ROWS})"
    )
});

/// One event of a page, borrowed from the page's text.
#[derive(serde::Deserialize)]
struct PageRow<'a>(
    i64,
    #[serde(borrow)] Cow<'a, str>,
    i64,
    #[serde(borrow)] &'a RawValue,
);

/// Replays `stream` from `from_version` up to `until` into `visit`.
pub(crate) async fn replay_stream<E, F>(
    pool: &SqlitePool,
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
        "es.sqlite.replay_stream",
        tenant = stream.tenant,
        stream_type = stream.stream_type,
        stream_id = stream.id,
        from_version,
        events = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let failed = |error: sqlx::Error| store_error(format!("read stream `{stream}`"), error);
        let (until_version, until_recorded_at) = bounds(until);
        let mut next_version = saturating_i64(from_version.max(1));
        let mut replayed = 0;
        loop {
            let row = sqlx::query(&PAGE_TEXT)
                .bind(stream.tenant)
                .bind(stream.stream_type)
                .bind(stream.id)
                .bind(next_version)
                .bind(until_version)
                .bind(until_recorded_at)
                .bind(PAGE)
                .fetch_one(pool)
                .await
                .map_err(failed)?;
            let rows: i64 = row.try_get("rows").map_err(failed)?;
            let last_version: Option<i64> = row.try_get("last_version").map_err(failed)?;
            let (Some(last_version), true) = (last_version, rows > 0) else {
                break;
            };
            let page = row
                .try_get::<Option<&str>, _>("page")
                .ok()
                .flatten()
                .and_then(|page| serde_json::from_str::<Vec<PageRow<'_>>>(page).ok())
                // A page that does not parse, or parses into other rows than it counts, holds a
                // value the splice could not carry: read it again row by row.
                .filter(|page| page.len() as i64 == rows);
            match page {
                Some(page) => {
                    for PageRow(version, event_type, schema_version, payload) in &page {
                        visit(event(
                            stream,
                            *version,
                            event_type.as_ref(),
                            *schema_version,
                            payload.get(),
                        )?)?;
                    }
                }
                None => {
                    let rows = sqlx::query(PAGE_ROWS)
                        .bind(stream.tenant)
                        .bind(stream.stream_type)
                        .bind(stream.id)
                        .bind(next_version)
                        .bind(until_version)
                        .bind(until_recorded_at)
                        .bind(PAGE)
                        .fetch_all(pool)
                        .await
                        .map_err(failed)?;
                    for row in &rows {
                        let version: i64 = row.try_get(0).unwrap_or(-1);
                        let column = |index: usize, name: &str| {
                            row.try_get::<&str, _>(index)
                                .map_err(|error| corrupt(stream, version, name, error))
                        };
                        let schema_version: i64 = row
                            .try_get(2)
                            .map_err(|error| corrupt(stream, version, "schema_version", error))?;
                        visit(event(
                            stream,
                            version,
                            column(1, "event_type")?,
                            schema_version,
                            column(3, "payload")?,
                        )?)?;
                    }
                }
            }
            replayed += rows as u64;
            if rows < PAGE {
                break;
            }
            next_version = last_version.saturating_add(1);
        }
        let span = tracing::Span::current();
        span.record("events", replayed);
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(replayed)
    }
    .instrument(span)
    .await
}

/// A row's values as an event, or why they cannot be one.
fn event<'a>(
    stream: StreamKey<'_>,
    version: i64,
    event_type: &'a str,
    schema_version: i64,
    payload: &'a str,
) -> Result<ReplayedEvent<'a>, StoreError> {
    let read = || -> Result<ReplayedEvent<'a>, String> {
        Ok(ReplayedEvent {
            stream_version: event_version(version)?,
            event_type,
            schema_version: version_u32("schema_version", schema_version)?,
            payload,
        })
    };
    read().map_err(|reason| StoreError::CorruptRow {
        stream: stream.to_string(),
        stream_version: version,
        reason,
    })
}

fn corrupt(stream: StreamKey<'_>, version: i64, name: &str, error: sqlx::Error) -> StoreError {
    StoreError::CorruptRow {
        stream: stream.to_string(),
        stream_version: version,
        reason: format!("column `{name}`: {error}"),
    }
}
