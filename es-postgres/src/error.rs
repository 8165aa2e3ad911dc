//! Errors of setting a store up. Errors of store operations are `es_core::StoreError`.

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
