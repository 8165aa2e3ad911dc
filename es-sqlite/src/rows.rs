//! Turning rows into es-core values without trusting them: every conversion that can fail maps
//! to a typed error instead of a panic.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use es_core::projection::DeadLetter;
use es_core::{Position, RawJson, RecordedEvent, Snapshot, StoreError, StreamKey};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

/// The columns of `es_events` that [`recorded_event`] reads, in a `SELECT` list.
pub(crate) const EVENT_COLUMNS: &str = "position, transaction_id, tenant, stream_type, stream_id, \
     stream_version, event_id, event_type, schema_version, payload, metadata, recorded_at";

/// One `es_events` row as a JSON array, in the order [`PageRow`] reads it. Texts become JSON
/// strings (payload and metadata too: stored text comes back exactly as stored, even text that
/// is not JSON); integers become JSON numbers.
const PAGE_ROW: &str = "json_array(position, transaction_id, tenant, stream_type, stream_id, \
     stream_version, event_id, event_type, schema_version, payload, metadata, recorded_at)";

/// A `SELECT` of one page of events as a single JSON text: `page` (an array of [`PAGE_ROW`]
/// arrays in `order`), `rows` and `last_version` (of the last row). `filter` is the `WHERE`
/// clause, `limit` the parameter holding the page size.
///
/// Why one value per page: sqlx copies every column of every row into an allocation of its own
/// (and frees it on another thread), which made a row of eleven columns cost about five times
/// the JSON text of the same row; see `docs/BENCHMARKS.md`.
pub(crate) fn page_query(filter: &str, order: &str, limit: &str) -> String {
    format!(
        "SELECT json_group_array({PAGE_ROW} ORDER BY {order}) AS page, count(*) AS rows, \
           max(stream_version) AS last_version \
         FROM (SELECT * FROM es_events WHERE {filter} ORDER BY {order} LIMIT {limit})"
    )
}

/// One row of a page, borrowed from the page's text where no escape forced a copy.
#[derive(serde::Deserialize)]
struct PageRow<'a>(
    i64,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    i64,
);

/// The events of a page read with [`page_query`], in order, up to and including the first row
/// that is not an event (an error; nothing after it is returned). `None` when the page's text
/// cannot be parsed (text SQLite's JSON cannot carry, such as invalid UTF-8): the caller reads
/// the page again row by row to report exactly which row is unreadable.
pub(crate) fn page_events(page: &str) -> Option<Vec<Result<RecordedEvent, StoreError>>> {
    let rows: Vec<PageRow<'_>> = serde_json::from_str(page).ok()?;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let PageRow(
            position,
            transaction_id,
            tenant,
            stream_type,
            stream_id,
            raw_version,
            event_id,
            event_type,
            schema_version,
            payload,
            metadata,
            recorded_at,
        ) = row;
        let read = || -> Result<(u64, Position, Uuid, u32, DateTime<Utc>), String> {
            Ok((
                event_version(raw_version)?,
                Position {
                    transaction: unsigned("transaction_id", transaction_id)?,
                    sequence: unsigned("position", position)?,
                },
                uuid("event_id", &event_id)?,
                version_u32("schema_version", schema_version)?,
                time("recorded_at", recorded_at)?,
            ))
        };
        match read() {
            Ok((stream_version, position, event_id, schema_version, recorded_at)) => {
                events.push(Ok(RecordedEvent {
                    tenant: tenant.into_owned(),
                    stream_type: stream_type.into_owned(),
                    stream_id: stream_id.into_owned(),
                    stream_version,
                    position,
                    event_id,
                    event_type: event_type.into_owned(),
                    schema_version,
                    payload: RawJson::from_string(payload.into_owned()),
                    metadata: RawJson::from_string(metadata.into_owned()),
                    recorded_at,
                }));
            }
            Err(reason) => {
                events.push(Err(StoreError::CorruptRow {
                    stream: shown_key(&tenant, &stream_type, &stream_id),
                    stream_version: raw_version,
                    reason,
                }));
                break;
            }
        }
    }
    Some(events)
}

/// A stream's key as messages show it (`tenant:type/id`, shortened and escaped).
pub(crate) fn shown_key(tenant: &str, stream_type: &str, id: &str) -> String {
    StreamKey {
        tenant,
        stream_type,
        id,
    }
    .to_string()
}

/// A value that does not fit its Rust type: the source of errors about rows that are not events.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InvalidValue(pub(crate) String);

/// Microseconds since the Unix epoch, the unit of every time column.
pub(crate) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The present in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    micros(Utc::now())
}

/// A column of a row, with what it is for messages.
fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, String>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name)
        .map_err(|error| format!("column `{name}`: {error}"))
}

/// An event's stream version, which starts at 1.
pub(crate) fn event_version(value: i64) -> Result<u64, String> {
    match unsigned("stream_version", value)? {
        0 => Err("column `stream_version` holds 0; versions start at 1".to_owned()),
        version => Ok(version),
    }
}

pub(crate) fn unsigned(name: &str, value: i64) -> Result<u64, String> {
    u64::try_from(value).map_err(|_| format!("column `{name}` holds the negative value {value}"))
}

pub(crate) fn version_u32(name: &str, value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .map_err(|_| format!("column `{name}` holds {value}, outside 0..=4294967295"))
}

fn time(name: &str, value: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| format!("column `{name}` holds {value}, not a representable time"))
}

fn uuid(name: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value)
        .map_err(|error| format!("column `{name}` holds {value:?}, not a UUID: {error}"))
}

/// Converts `value` to the SQLite integer type, saturating: the bounds it is used for (versions,
/// positions) are never near `i64::MAX`.
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A position's two numbers as SQLite integers (saturating, which keeps comparisons exact:
/// no stored position exceeds `i64::MAX`).
pub(crate) fn position_params(position: Position) -> (i64, i64) {
    (
        saturating_i64(position.transaction),
        saturating_i64(position.sequence),
    )
}

/// The key of the stream a row belongs to, as messages show it, as far as the row is readable.
fn row_stream(row: &SqliteRow) -> String {
    let part = |name: &str| {
        row.try_get::<String, _>(name)
            .unwrap_or_else(|_| "<unreadable>".to_owned())
    };
    shown_key(&part("tenant"), &part("stream_type"), &part("stream_id"))
}

/// Reads an `es_events` row selected with [`EVENT_COLUMNS`].
pub(crate) fn recorded_event(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let raw_version: i64 = row.try_get("stream_version").unwrap_or(-1);
    read_event(row, raw_version).map_err(|reason| StoreError::CorruptRow {
        stream: row_stream(row),
        stream_version: raw_version,
        reason,
    })
}

fn read_event(row: &SqliteRow, raw_version: i64) -> Result<RecordedEvent, String> {
    let stream_version = event_version(raw_version)?;
    let transaction = unsigned("transaction_id", column(row, "transaction_id")?)?;
    let sequence = unsigned("position", column(row, "position")?)?;
    let event_id: String = column(row, "event_id")?;
    Ok(RecordedEvent {
        tenant: column(row, "tenant")?,
        stream_type: column(row, "stream_type")?,
        stream_id: column(row, "stream_id")?,
        stream_version,
        position: Position {
            transaction,
            sequence,
        },
        event_id: uuid("event_id", &event_id)?,
        event_type: column(row, "event_type")?,
        schema_version: version_u32("schema_version", column(row, "schema_version")?)?,
        payload: RawJson::from_string(column::<String>(row, "payload")?),
        metadata: RawJson::from_string(column::<String>(row, "metadata")?),
        recorded_at: time("recorded_at", column(row, "recorded_at")?)?,
    })
}

/// Reads an `es_snapshots` row (all columns).
pub(crate) fn snapshot(row: &SqliteRow) -> Result<Snapshot, StoreError> {
    let raw_version: i64 = row.try_get("stream_version").unwrap_or(-1);
    let read = || -> Result<Snapshot, String> {
        Ok(Snapshot {
            tenant: column(row, "tenant")?,
            stream_type: column(row, "stream_type")?,
            stream_id: column(row, "stream_id")?,
            stream_version: unsigned("stream_version", raw_version)?,
            state_version: version_u32("state_version", column(row, "state_version")?)?,
            state: RawJson::from_string(column::<String>(row, "state")?),
            taken_at: time("taken_at", column(row, "taken_at")?)?,
        })
    };
    read().map_err(|reason| StoreError::CorruptRow {
        stream: row_stream(row),
        stream_version: raw_version,
        reason: format!("unreadable snapshot: {reason}"),
    })
}

/// Reads an `es_dead_letters` row (all columns).
pub(crate) fn dead_letter(row: &SqliteRow) -> Result<DeadLetter, StoreError> {
    let raw_version: i64 = row.try_get("stream_version").unwrap_or(-1);
    let read = || -> Result<DeadLetter, String> {
        let event_id: String = column(row, "event_id")?;
        Ok(DeadLetter {
            projection: column(row, "projection")?,
            position: Position {
                transaction: unsigned("transaction_id", column(row, "transaction_id")?)?,
                sequence: unsigned("position", column(row, "position")?)?,
            },
            event_id: uuid("event_id", &event_id)?,
            tenant: column(row, "tenant")?,
            stream_type: column(row, "stream_type")?,
            stream_id: column(row, "stream_id")?,
            stream_version: unsigned("stream_version", raw_version)?,
            event_type: column(row, "event_type")?,
            error: column(row, "error")?,
            attempts: u32::try_from(column::<i64>(row, "attempts")?)
                .map_err(|_| "column `attempts` is out of range".to_owned())?,
            parked_at: time("parked_at", column(row, "parked_at")?)?,
        })
    };
    read().map_err(|reason| StoreError::CorruptRow {
        stream: row_stream(row),
        stream_version: raw_version,
        reason: format!("unreadable dead letter: {reason}"),
    })
}

/// Reads a position from two integer columns of a row that is not an event (a checkpoint).
pub(crate) fn position(row: &SqliteRow, what: impl fmt::Display) -> Result<Position, StoreError> {
    let read = || -> Result<Position, String> {
        Ok(Position {
            transaction: unsigned("transaction_id", column(row, "transaction_id")?)?,
            sequence: unsigned("position", column(row, "position")?)?,
        })
    };
    read().map_err(|reason| StoreError::backend(format!("read {what}"), InvalidValue(reason)))
}

/// A stream version read by an aggregate query such as `max(stream_version)`.
pub(crate) fn stream_version(
    stream: StreamKey<'_>,
    value: Option<i64>,
) -> Result<Option<u64>, StoreError> {
    value
        .map(|raw| {
            unsigned("stream_version", raw).map_err(|reason| StoreError::CorruptRow {
                stream: stream.to_string(),
                stream_version: raw,
                reason,
            })
        })
        .transpose()
}
