//! Appending a batch: one statement (`sql/append.sql`) per attempt, retried only when a unique
//! index caught a concurrent writer, so every decision is made on committed data. A committed
//! append signals the store's notifier, which notifies listeners after the commit.
//!
//! Under tenant isolation each attempt runs in a transaction scoped to the stream's tenant:
//! `BEGIN`, the setting, the statement, `COMMIT`, four round trips instead of one.

use std::time::Instant;

use es_core::{
    AppendOutcome, AppendedRange, ExpectedVersion, NewEvent, StoreError, StreamKey, StreamKeyBuf,
};
use sqlx::Row;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::store_error;
use crate::read::{position, version};
use crate::store::PgStore;

/// The stream key: its violation means another writer committed this version first.
const VERSION_KEY: &str = "events_pkey";

/// The event id key: its violation means one of the batch's ids is stored.
const EVENT_ID_KEY: &str = "events_event_id_key";

pub(crate) async fn append(
    store: &PgStore,
    stream: StreamKey<'_>,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendOutcome, StoreError> {
    let span = tracing::debug_span!(
        "es.pg.append",
        schema = store.schema(),
        stream = %stream,
        events = events.len(),
        expected = %expected,
        attempts = tracing::field::Empty,
        outcome = tracing::field::Empty,
        elapsed_us = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let result = append_checked(store, stream, expected, &events).await;
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

async fn append_checked(
    store: &PgStore,
    stream: StreamKey<'_>,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, StoreError> {
    es_core::contract::check_append(stream, events)?;
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
    let operation = || format!("append to stream `{stream}`");
    let mut attempts: u32 = 0;
    // Each retry follows a unique violation, which PostgreSQL raises only after the other
    // writer committed; the next attempt's snapshot sees that commit and decides on it. So every
    // retry is paid for by another writer's progress, and the loop ends.
    loop {
        attempts += 1;
        tracing::Span::current().record("attempts", attempts);
        let mut session = store
            .session(stream.tenant)
            .await
            .map_err(|e| store_error(operation(), e))?;
        let result = sqlx::query(&inner.sql.append)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&payloads)
            .bind(&metadata)
            .bind(kind)
            .bind(exact)
            .fetch_one(session.connection())
            .await;
        let row = match result {
            Ok(row) => row,
            // Another writer committed this version first: decide again on a fresh snapshot.
            Err(error) if is_race(&error, VERSION_KEY) => {
                tracing::debug!(
                    stream = %stream,
                    attempts,
                    "a concurrent append won the race, deciding again"
                );
                continue;
            }
            // One of the batch's ids is stored: the same batch re-sent, or a reused id.
            Err(error) if is_race(&error, EVENT_ID_KEY) => {
                drop(session);
                match classify(store, stream, &ids).await? {
                    Some(outcome) => return Ok(outcome),
                    // Under tenant isolation, an id this tenant cannot see is another tenant's:
                    // looking again would find nothing again.
                    None if store.isolates_tenants() => {
                        return Err(StoreError::backend(
                            operation(),
                            "an event id of the batch is used by an event of another tenant",
                        ));
                    }
                    None => continue,
                }
            }
            Err(error) => return Err(map_error(error, stream)),
        };
        let reply = |e| store_error(operation(), e);
        let current: Option<i64> = row.try_get(0).map_err(reply)?;
        let written: i64 = row.try_get(1).map_err(reply)?;
        let current = current.map(|v| version(v, stream)).transpose()?;
        if written == 0 {
            // Nothing was written: the transaction, if any, is rolled back.
            drop(session);
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
            if maybe_resent && let Some(outcome) = classify(store, stream, &ids).await? {
                return Ok(outcome);
            }
            return Err(StoreError::Conflict {
                stream: stream.to_owned(),
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
        let range = AppendedRange {
            first_version: current.unwrap_or(0) + 1,
            last_version: version(last_version, stream)?,
            last_position: position(&last_transaction, last_position, stream, last_version)?,
        };
        session
            .finish()
            .await
            .map_err(|e| store_error(operation(), e))?;
        return Ok(AppendOutcome::Appended(range));
    }
}

/// Whether `error` is a unique violation of `constraint` (caused by a concurrent writer or by a
/// stored event id).
fn is_race(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// The store's error for a failed append statement.
///
/// The input contract (`es_core::contract`) refuses, before any round trip, every value
/// PostgreSQL's `text` and `jsonb` cannot hold; should PostgreSQL refuse one all the same, the
/// error names the SQLSTATE only: the server's message and detail may quote the payload.
fn map_error(error: sqlx::Error, stream: StreamKey<'_>) -> StoreError {
    let operation = format!("append to stream `{stream}`");
    if let sqlx::Error::Database(db) = &error
        && let Some(code @ ("22P02" | "22P05" | "22021")) = db.code().as_deref()
    {
        return StoreError::backend(
            operation,
            format!("PostgreSQL refused a value of the batch (SQLSTATE {code})"),
        );
    }
    store_error(operation, error)
}

/// After the append found one of the batch's ids stored: the very same batch (same ids, same
/// order, same stream, written by one append and nothing more) is already appended; anything
/// else is a reused id. `None` when the ids are not there (deleted behind the store's back, or,
/// under tenant isolation, another tenant's).
async fn classify(
    store: &PgStore,
    stream: StreamKey<'_>,
    ids: &[Uuid],
) -> Result<Option<AppendOutcome>, StoreError> {
    let operation = || format!("append to stream `{stream}`");
    let reply = |e| store_error(operation(), e);
    let mut session = store.session(stream.tenant).await.map_err(reply)?;
    // Not a prepared statement: planned for these ids and the table as it is now. A cached
    // generic plan, made while the table was small, would scan the whole log.
    let rows = sqlx::query(&store.inner.sql.classify)
        .persistent(false)
        .bind(ids)
        .fetch_all(session.connection())
        .await
        .map_err(reply)?;
    session.finish().await.map_err(reply)?;
    struct Found {
        ordinal: i64,
        event_id: Uuid,
        stream: StreamKeyBuf,
        version: u64,
        position: es_core::Position,
        transaction: String,
        with_others: bool,
    }
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let stored_stream = StreamKeyBuf {
            tenant: row.try_get(2).map_err(reply)?,
            stream_type: row.try_get(3).map_err(reply)?,
            id: row.try_get(4).map_err(reply)?,
        };
        let stored_version: i64 = row.try_get(5).map_err(reply)?;
        let transaction: String = row.try_get(7).map_err(reply)?;
        found.push(Found {
            ordinal: row.try_get(0).map_err(reply)?,
            event_id: row.try_get(1).map_err(reply)?,
            version: version(stored_version, &stored_stream)?,
            position: position(
                &transaction,
                row.try_get(6).map_err(reply)?,
                &stored_stream,
                stored_version,
            )?,
            stream: stored_stream,
            transaction,
            with_others: row.try_get(8).map_err(reply)?,
        });
    }
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let same_batch = found.len() == ids.len()
        && found.iter().enumerate().all(|(offset, stored)| {
            stored.ordinal == offset as i64 + 1
                && stored.stream.as_key() == stream
                && stored.transaction == first.transaction
                && stored.version == first.version + offset as u64
                && !stored.with_others
        });
    if !same_batch {
        return Err(StoreError::DuplicateEventId {
            event_id: first.event_id,
            existing_stream: first.stream.clone(),
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
