//! Appending a batch: one statement (`sql/append.sql`) per attempt, retried only when a unique
//! index caught a concurrent writer, so every decision is made on committed data. A committed
//! append signals the store's notifier, which notifies listeners after the commit.

use std::time::Instant;

use es_core::{AppendOutcome, AppendedRange, ExpectedVersion, NewEvent, StoreError};
use sqlx::Row;
use tracing::Instrument;
use uuid::Uuid;

use crate::read::{position, version};
use crate::store::PgStore;

/// The stream key: its violation means another writer committed this version first.
const VERSION_KEY: &str = "events_pkey";

/// The event id key: its violation means one of the batch's ids is stored.
const EVENT_ID_KEY: &str = "events_event_id_key";

pub(crate) async fn append(
    store: &PgStore,
    stream_type: &str,
    stream_id: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendOutcome, StoreError> {
    let span = tracing::debug_span!(
        "es.pg.append",
        schema = store.schema(),
        stream_id,
        events = events.len(),
        expected = %expected,
        attempts = tracing::field::Empty,
        outcome = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let result = append_checked(store, stream_type, stream_id, expected, &events).await;
        if let Ok(AppendOutcome::Appended(_)) = result {
            // Committed: wake the listeners, in the background (see `notifier.rs`).
            store
                .inner
                .notifier
                .signal(&store.inner.pool, &store.inner.channel);
        }
        let span = tracing::Span::current();
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        span.record(
            "outcome",
            match &result {
                Ok(AppendOutcome::Appended(_)) => "appended",
                Ok(AppendOutcome::AlreadyAppended(_)) => "already appended",
                Err(StoreError::Conflict { .. }) => "conflict",
                Err(_) => "error",
            },
        );
        result
    }
    .instrument(span)
    .await
}

fn invalid(stream_id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidAppend {
        stream_id: stream_id.to_owned(),
        reason: reason.into(),
    }
}

/// Rejects what PostgreSQL would reject less clearly, before any round trip.
fn check_batch(stream_type: &str, stream_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    es_core::check_batch(stream_id, events)?;
    // PostgreSQL text cannot hold NUL.
    if stream_id.contains('\0') {
        return Err(invalid(stream_id, "the stream id contains a NUL character"));
    }
    if stream_type.contains('\0') {
        return Err(invalid(
            stream_id,
            "the stream type contains a NUL character",
        ));
    }
    if let Some(event) = events.iter().find(|event| event.event_type.contains('\0')) {
        return Err(invalid(
            stream_id,
            format!(
                "the type of event {} contains a NUL character",
                event.event_id
            ),
        ));
    }
    Ok(())
}

async fn append_checked(
    store: &PgStore,
    stream_type: &str,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, StoreError> {
    check_batch(stream_type, stream_id, events)?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let schema_versions: Vec<i64> = events.iter().map(|e| i64::from(e.schema_version)).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let metadata: Vec<&str> = events.iter().map(|e| e.metadata.as_str()).collect();
    let (kind, exact) = match expected {
        ExpectedVersion::Any => ("any", 0),
        ExpectedVersion::NoStream => ("no_stream", 0),
        ExpectedVersion::StreamExists => ("stream_exists", 0),
        // A version beyond i64 cannot exist, so it can never match: -1 never does either.
        ExpectedVersion::Exact(version) => ("exact", i64::try_from(version).unwrap_or(-1)),
    };
    let inner = &store.inner;
    let operation = || format!("append to stream `{stream_id}`");
    let mut attempts: u32 = 0;
    // Each retry follows a unique violation, which PostgreSQL raises only after the other
    // writer committed; the next attempt's snapshot sees that commit and decides on it. So every
    // retry is paid for by another writer's progress, and the loop ends.
    loop {
        attempts += 1;
        tracing::Span::current().record("attempts", attempts);
        let result = sqlx::query(&inner.sql.append)
            .bind(stream_type)
            .bind(stream_id)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&payloads)
            .bind(&metadata)
            .bind(kind)
            .bind(exact)
            .fetch_one(&inner.pool)
            .await;
        let row = match result {
            Ok(row) => row,
            // Another writer committed this version first: decide again on a fresh snapshot.
            Err(error) if is_race(&error, VERSION_KEY) => {
                tracing::debug!(
                    stream_id,
                    attempts,
                    "a concurrent append won the race, deciding again"
                );
                continue;
            }
            // One of the batch's ids is stored: the same batch re-sent, or a reused id.
            Err(error) if is_race(&error, EVENT_ID_KEY) => {
                match classify(store, stream_id, &ids).await? {
                    Some(outcome) => return Ok(outcome),
                    None => continue,
                }
            }
            Err(error) => return Err(map_error(error, stream_id)),
        };
        let reply = |e| StoreError::backend(operation(), e);
        let current: Option<i64> = row.try_get(0).map_err(reply)?;
        let written: i64 = row.try_get(1).map_err(reply)?;
        let current = current.map(|v| version(v, stream_id)).transpose()?;
        if written == 0 {
            // The expectation does not hold; but a re-sent batch is not a conflict, so the
            // ids are looked up first (the idempotency check comes before the version check).
            // A batch re-sent with an exact expectation (or none for no stream) sits right
            // after that version: unless its first event is there, this is a plain conflict.
            let next_event_id: Option<Uuid> = row.try_get(5).map_err(reply)?;
            let maybe_resent = match expected {
                ExpectedVersion::NoStream | ExpectedVersion::Exact(_) => {
                    next_event_id == Some(ids[0])
                }
                ExpectedVersion::Any | ExpectedVersion::StreamExists => true,
            };
            if maybe_resent && let Some(outcome) = classify(store, stream_id, &ids).await? {
                return Ok(outcome);
            }
            return Err(StoreError::Conflict {
                stream_id: stream_id.to_owned(),
                expected,
                actual: current,
            });
        }
        let last_version: Option<i64> = row.try_get(2).map_err(reply)?;
        let last_position: Option<i64> = row.try_get(3).map_err(reply)?;
        let last_transaction: Option<String> = row.try_get(4).map_err(reply)?;
        let (Some(last_version), Some(last_position), Some(last_transaction)) =
            (last_version, last_position, last_transaction)
        else {
            return Err(StoreError::backend(
                operation(),
                "the append reported no last event",
            ));
        };
        if written as usize != events.len() {
            return Err(StoreError::backend(
                operation(),
                format!("the append wrote {written} of {} events", events.len()),
            ));
        }
        let last_version = version(last_version, stream_id)?;
        return Ok(AppendOutcome::Appended(AppendedRange {
            first_version: current.unwrap_or(0) + 1,
            last_version,
            last_position: position(
                &last_transaction,
                last_position,
                stream_id,
                last_version as i64,
            )?,
        }));
    }
}

/// Whether `error` is a unique violation of `constraint` (caused by a concurrent writer or by a
/// stored event id).
fn is_race(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// Input PostgreSQL refused becomes [`StoreError::InvalidAppend`]; the rest is a backend error.
/// Messages never include the server's detail, which may quote the payload.
fn map_error(error: sqlx::Error, stream_id: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let reason = match db.code().as_deref() {
            // invalid_text_representation, untranslatable_character: jsonb refused the text.
            Some("22P02" | "22P05") => {
                Some("a payload or metadata is not JSON that PostgreSQL accepts")
            }
            // character_not_in_repertoire: a NUL or invalid byte in text.
            Some("22021") => {
                Some("a payload or metadata holds a character PostgreSQL text cannot store")
            }
            _ => None,
        };
        if let Some(reason) = reason {
            return invalid(stream_id, format!("{reason} ({})", db.message()));
        }
    }
    StoreError::backend(format!("append to stream `{stream_id}`"), error)
}

/// After the append found one of the batch's ids stored: the very same batch (same ids, same
/// order, same stream, written by one append and nothing more) is already appended; anything
/// else is a reused id. `None` when the ids are no longer there (deleted behind the store's
/// back), so the append is attempted again.
async fn classify(
    store: &PgStore,
    stream_id: &str,
    ids: &[Uuid],
) -> Result<Option<AppendOutcome>, StoreError> {
    let operation = || format!("append to stream `{stream_id}`");
    // Not a prepared statement: planned for these ids and the table as it is now. A cached
    // generic plan, made while the table was small, would scan the whole log.
    let rows = sqlx::query(&store.inner.sql.classify)
        .persistent(false)
        .bind(ids)
        .fetch_all(&store.inner.pool)
        .await
        .map_err(|e| StoreError::backend(operation(), e))?;
    struct Found {
        ordinal: i64,
        event_id: Uuid,
        stream_id: String,
        version: u64,
        position: es_core::Position,
        transaction: String,
        with_others: bool,
    }
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let reply = |e| StoreError::backend(operation(), e);
        let stored_stream: String = row.try_get(2).map_err(reply)?;
        let stored_version: i64 = row.try_get(3).map_err(reply)?;
        let transaction: String = row.try_get(5).map_err(reply)?;
        found.push(Found {
            ordinal: row.try_get(0).map_err(reply)?,
            event_id: row.try_get(1).map_err(reply)?,
            version: version(stored_version, &stored_stream)?,
            position: position(
                &transaction,
                row.try_get(4).map_err(reply)?,
                &stored_stream,
                stored_version,
            )?,
            stream_id: stored_stream,
            transaction,
            with_others: row.try_get(6).map_err(reply)?,
        });
    }
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let same_batch = found.len() == ids.len()
        && found.iter().enumerate().all(|(offset, stored)| {
            stored.ordinal == offset as i64 + 1
                && stored.stream_id == stream_id
                && stored.transaction == first.transaction
                && stored.version == first.version + offset as u64
                && !stored.with_others
        });
    if !same_batch {
        return Err(StoreError::DuplicateEventId {
            event_id: first.event_id,
            existing_stream_id: first.stream_id.clone(),
            existing_version: first.version,
        });
    }
    let last = found.last().unwrap_or(first);
    Ok(Some(AppendOutcome::AlreadyAppended(AppendedRange {
        first_version: first.version,
        last_version: last.version,
        last_position: last.position,
    })))
}

#[cfg(test)]
mod tests {
    use es_core::RawJson;

    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "Tested".to_owned(),
            schema_version: 1,
            payload: RawJson::empty_object(),
            metadata: RawJson::empty_object(),
        }
    }

    fn reason(result: Result<(), StoreError>) -> String {
        match result {
            Err(StoreError::InvalidAppend { reason, .. }) => reason,
            other => panic!("expected an invalid append, got {other:?}"),
        }
    }

    #[test]
    fn batches_are_checked_before_any_round_trip() {
        assert!(check_batch("t", "s", &[event(), event()]).is_ok());
        assert!(reason(check_batch("t", "s", &[])).contains("empty"));
        let one = event();
        assert!(reason(check_batch("t", "s", &[one.clone(), one])).contains("twice"));
        assert!(reason(check_batch("t", "s\0", &[event()])).contains("stream id"));
        assert!(reason(check_batch("t\0", "s", &[event()])).contains("stream type"));
        let mut bad_type = event();
        bad_type.event_type.push('\0');
        assert!(reason(check_batch("t", "s", &[bad_type])).contains("type of event"));
    }
}
