//! The embedded default store of es: the whole event store in one SQLite file, no server.
//!
//! SQLite is compiled into the program (sqlx's bundled SQLite): nothing to install. The file is
//! created on first open, its schema migrated by embedded migrations, and it runs in WAL mode so
//! readers never block the writer.
//!
//! ```
//! use es_core::{EventStore, ExpectedVersion, NewEvent, RawJson, StreamKey, Until};
//! use es_sqlite::SqliteStore;
//! use futures_util::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("bank.db");
//! let store = SqliteStore::open(&path).await?; // created and migrated on first open
//!
//! // A stream is named by its tenant, type and id; `StreamKey::new` is in the default tenant.
//! let account = StreamKey::new("account", "acc-1");
//! let opened = NewEvent {
//!     event_id: uuid::Uuid::new_v4(),
//!     event_type: "Opened".into(),
//!     schema_version: 1,
//!     payload: RawJson::from(serde_json::json!({ "owner": "ada" })),
//!     metadata: RawJson::empty_object(),
//! };
//! store.append(account, ExpectedVersion::NoStream, vec![opened.clone()]).await?;
//!
//! // Appending the same batch again (say, after a lost reply) writes nothing.
//! let again = store.append(account, ExpectedVersion::NoStream, vec![opened]).await?;
//! assert!(matches!(again, es_core::AppendOutcome::AlreadyAppended(_)));
//!
//! // The same id in another tenant is another stream.
//! let elsewhere = account.in_tenant("acme");
//! assert_eq!(store.stream_version(elsewhere).await?, None);
//!
//! let events: Vec<_> = store.read_stream(account, 1, Until::End).try_collect().await?;
//! assert_eq!((events.len(), events[0].stream_version), (1, 1));
//! assert_eq!(events[0].tenant, es_core::DEFAULT_TENANT);
//! store.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! With an aggregate, the store is one line of the program: `Repository::<Account,
//! _>::new(SqliteStore::open("bank.db").await?)`.
//!
//! # Opening and migrating
//!
//! [`SqliteStore::open`] and [`SqliteStore::open_with`] bring the schema up to date before they
//! return (the migrations run under SQLite's write lock, so processes opening one file at once
//! migrate it once). [`SqliteOptions::migrate`]`(false)` opts out, for a deploy step that
//! migrates before the release starts: the store then only checks the schema's version and
//! refuses a database that is not at this release's ([`OpenError::NotMigrated`],
//! [`OpenError::NewerSchema`]). [`SqliteStore::new`] on a pool of your own never migrates: call
//! [`SqliteStore::migrate`].
//!
//! # Streams and tenants
//!
//! Events, versions and snapshots are keyed by [`StreamKey`](es_core::StreamKey): tenant,
//! stream type and id. Every operation first checks its input against
//! [`es_core::contract`], so this store accepts and refuses exactly what the others do
//! ([`StoreError::InvalidInput`](es_core::StoreError::InvalidInput), nothing written).
//! [`read_all`](es_core::EventStore::read_all) reads the whole log or one tenant's
//! ([`LogScope`](es_core::LogScope)), in position order either way.
//!
//! # The file
//!
//! Besides `<file>` SQLite keeps `<file>-wal` and `<file>-shm` while the database is open:
//! copy all three, or none while it is in use. Tables, all prefixed `es_` so read models can
//! live in the same file: `es_events` (the log), `es_snapshots`, `es_checkpoints`,
//! `es_dead_letters`, `es_projection_locks`, `es_inbox` (the events each integration-event
//! consumer processed), plus sqlx's `_sqlx_migrations`.
//!
//! # Concurrency
//!
//! SQLite has one writer at a time. Every append takes the write lock before reading anything
//! (one statement that is its own transaction for the common appends, a `BEGIN IMMEDIATE`
//! transaction otherwise), so the version check, the idempotency check and the inserts see one
//! state: expected-version conflicts are exact. Writes of one store (and its clones) queue in
//! process first; writers in other processes wait in SQLite's busy handler up to the busy
//! timeout ([`SqliteOptions::busy_timeout`], 30 s). Reads run in parallel with the writer.
//!
//! # Positions
//!
//! An event's [`Position`](es_core::Position) is `(transaction, sequence)`: `sequence` is its
//! row id in the log (`position`, never reused), `transaction` the position of the first event
//! of its append. With one writer, positions are assigned in commit order, so the log read in
//! position order never skips an event that commits later.
//!
//! # Projections
//!
//! [`ProjectionStore::Transaction`](es_core::projection::ProjectionStore::Transaction) is a
//! `sqlx::Transaction<'static, Sqlite>`: a read model written through it (`&mut **transaction`)
//! commits together with the checkpoint, so it sees each event exactly once. One runner per
//! projection: a leased lock row ([`SqliteLock`]), checked and renewed inside every committing
//! transaction ([`fence`](es_core::projection::ProjectionStore::fence)), deleted before
//! [`release`](es_core::projection::ProjectionStore::release) returns. See `docs/sqlite.md`.
//!
//! # Errors
//!
//! Opening reports [`OpenError`]: a file that is not a database, a location that cannot be
//! written, a database of a newer es-sqlite; in each case nothing was written. Once open, a
//! database that is busy past the busy timeout, or a connection that could not be had, is
//! [`StoreError::Unavailable`](es_core::StoreError::Unavailable) (retrying later may work:
//! [`StoreError::is_transient`](es_core::StoreError::is_transient)).
#![deny(missing_docs)]

mod error;
mod open;
mod options;
#[cfg(test)]
mod plans;
mod projection;
mod replay;
mod rows;
mod sql_store;
mod store;

pub use open::OpenError;
pub use options::SqliteOptions;
pub use projection::SqliteLock;
pub use store::SqliteStore;

/// The sqlx types a SQL read model needs, so it can name them without its own sqlx dependency
/// (it must use the same sqlx version as this crate anyway).
pub use sqlx;
