//! Errors of setting a store up ([`PgError`]), and how driver errors of store operations become
//! `es_core::StoreError`s.

use es_core::StoreError;

/// Why a [`PgStore`](crate::PgStore) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The schema name is not a plain PostgreSQL identifier this crate accepts.
    #[error("invalid schema name {schema:?}: {reason}")]
    InvalidSchema {
        /// The name given.
        schema: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No connection could be opened.
    #[error("failed to connect to PostgreSQL: {source}")]
    Connect {
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A statement run while setting up failed.
    #[error("failed to {operation} in schema `{schema}`: {source}")]
    Database {
        /// The schema.
        schema: String,
        /// What was being done, e.g. "create the schema".
        operation: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed or the schema's migration history does not match this crate's.
    #[error("failed to migrate schema `{schema}`: {source}")]
    Migrate {
        /// The schema.
        schema: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
}

/// A driver error of `operation` as a store error: [`StoreError::Unavailable`] when retrying
/// later may succeed (see [`is_transient`]), [`StoreError::Backend`] otherwise.
pub(crate) fn store_error(operation: impl Into<String>, error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        StoreError::unavailable(operation, error)
    } else {
        StoreError::backend(operation, error)
    }
}

/// Whether the database was out of reach or too busy, rather than refusing the work: the pool
/// ran out of time, the connection broke, or PostgreSQL reported a connection failure (class
/// 08), insufficient resources (class 53), a serialization failure (40001), a deadlock
/// (40P01), a lock wait that ran out (55P03), or a shutdown or terminated backend (57P01-03).
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_of_an_unavailable_database_are_transient() {
        for code in [
            "08000", "08006", "08P01", "53000", "53100", "53300", "40001", "40P01", "55P03",
            "57P01", "57P02", "57P03",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in [
            "23505", "22P02", "42501", "42P01", "57014", "40002", "XX000",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn pool_timeouts_and_broken_connections_are_unavailable() {
        let timed_out = store_error("append to stream `a/b`", sqlx::Error::PoolTimedOut);
        assert!(timed_out.is_transient(), "{timed_out:?}");
        let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(store_error("read", sqlx::Error::Io(broken)).is_transient());
        let closed = store_error("read", sqlx::Error::PoolClosed);
        assert!(matches!(closed, StoreError::Backend { .. }), "{closed:?}");
    }
}
