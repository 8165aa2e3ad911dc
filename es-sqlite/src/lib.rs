//! The embedded default store of es: the whole event store in one SQLite file, no server.
//!
//! SQLite is compiled into the program (sqlx's bundled SQLite): nothing to install. The file is
//! created on first open, its schema migrated by embedded migrations, and it runs in WAL mode so
//! readers never block the writer.
//!
//! ```
//! use es_core::{EventStore, ExpectedVersion, NewEvent, RawJson, Until};
//! use es_sqlite::SqliteStore;
//! use futures_util::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("bank.db");
//! let store = SqliteStore::open(&path).await?; // created and migrated on first open
//!
//! let opened = NewEvent {
//!     event_id: uuid::Uuid::new_v4(),
//!     event_type: "Opened".into(),
//!     schema_version: 1,
//!     payload: RawJson::from(serde_json::json!({ "owner": "ada" })),
//!     metadata: RawJson::empty_object(),
//! };
//! store.append("account", "acc-1", ExpectedVersion::NoStream, vec![opened.clone()]).await?;
//!
//! // Appending the same batch again (say, after a lost reply) writes nothing.
//! let again = store.append("account", "acc-1", ExpectedVersion::NoStream, vec![opened]).await?;
//! assert!(matches!(again, es_core::AppendOutcome::AlreadyAppended(_)));
//!
//! let events: Vec<_> = store.read_stream("acc-1", 1, Until::End).try_collect().await?;
//! assert_eq!((events.len(), events[0].stream_version), (1, 1));
//! store.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! With an aggregate, the store is one line of the program: `Repository::<Account,
//! _>::new(SqliteStore::open("bank.db").await?)`.
//!
//! # The file
//!
//! Besides `<file>` SQLite keeps `<file>-wal` and `<file>-shm` while the database is open:
//! copy all three, or none while it is in use. Tables, all prefixed `es_` so read models can
//! live in the same file: `es_events` (the log), `es_snapshots`, `es_checkpoints`,
//! `es_dead_letters`, `es_projection_locks`, plus sqlx's `_sqlx_migrations`.
//!
//! # Concurrency
//!
//! SQLite has one writer at a time. Every append takes the write lock before reading anything
//! (a `BEGIN IMMEDIATE` transaction, or for a single event one statement that is its own
//! transaction), so the version check, the idempotency check and the inserts see one state:
//! expected-version conflicts are exact. Writes of one store
//! (and its clones) queue in process first; writers in other processes wait in SQLite's busy
//! handler up to the busy timeout ([`SqliteOptions::busy_timeout`], 30 s). Reads run in
//! parallel with the writer.
//!
//! # Positions
//!
//! An event's [`Position`](es_core::Position) is `(transaction, sequence)`: `sequence` is its
//! row id in the log (`position`, never reused), `transaction` the position of the first event
//! of its append. With one writer, positions are assigned in commit order, so the log read in
//! position order never skips an event that commits later (P9).
//!
//! # Projections
//!
//! [`ProjectionStore::Transaction`](es_core::projection::ProjectionStore::Transaction) is a
//! `sqlx::Transaction<'static, Sqlite>`: a read model written through it (`&mut **transaction`)
//! commits together with the checkpoint, so it sees each event exactly once. One runner per
//! projection: see [`SqliteLock`] and `docs/sqlite.md`.
//!
//! # Errors
//!
//! Opening reports [`OpenError`]: a file that is not a database, a location that cannot be
//! written, a database of a newer es-sqlite; in each case nothing was written.
#![deny(missing_docs)]

mod open;
mod options;
mod projection;
mod replay;
mod rows;
mod store;

pub use open::OpenError;
pub use options::SqliteOptions;
pub use projection::{LockLost, SqliteLock};
pub use store::SqliteStore;

/// The sqlx types a SQL read model needs, so it can name them without its own sqlx dependency
/// (it must use the same sqlx version as this crate anyway).
pub use sqlx;
