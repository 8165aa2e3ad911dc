//! Driver errors as [`StoreError`]s: the one place that decides which failures are transient.

use es_core::StoreError;

/// SQLite's primary result codes for a lock another connection holds (the low byte of an
/// extended code).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

/// Wraps a driver error with what the store was doing: [`StoreError::Unavailable`] when retrying
/// later can help (the pool had no connection in time, the connection or its worker was lost,
/// an I/O error, or another connection kept the write lock past the busy timeout),
/// [`StoreError::Backend`] otherwise.
pub(crate) fn store_error(operation: impl Into<String>, error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        StoreError::unavailable(operation, error)
    } else {
        StoreError::backend(operation, error)
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        _ => false,
    }
}
