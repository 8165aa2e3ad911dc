//! The production event store of `es`, on PostgreSQL (15 or newer).
//!
//! ```no_run
//! use es_core::{EventStore, ExpectedVersion, NewEvent, Position, RawJson};
//! use es_postgres::PgStore;
//! use uuid::Uuid;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Tables live in the PostgreSQL schema `es` unless told otherwise.
//! let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/postgres")
//!     .await?
//!     .with_schema("billing")?;
//! store.migrate().await?;
//!
//! let event = NewEvent {
//!     event_id: Uuid::new_v4(),
//!     event_type: "Opened".to_owned(),
//!     schema_version: 1,
//!     payload: RawJson::from_string(r#"{"owner":"ada"}"#),
//!     metadata: RawJson::empty_object(),
//! };
//! store.append("account", "account-1", ExpectedVersion::NoStream, vec![event]).await?;
//!
//! // The global log, in an order no reader ever skips an event of.
//! let first_page = store.read_all(Position::START, 100).await?;
//! assert_eq!(first_page.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! [`PgStore`] implements [`es_core::EventStore`] (append under an expected version, stream
//! reads, the global log, snapshots) and [`es_core::projection::ProjectionStore`] (checkpoints,
//! dead letters, a transaction shared with SQL read models, a per-projection lock that fences a
//! runner which lost it, and live notification), and passes the store conformance suite of
//! `es-core`.
//!
//! - **Append**: one statement and one round trip per batch. A concurrency conflict is decided
//!   by the primary key `(stream_id, stream_version)`: a racing writer fails with SQLSTATE 23505,
//!   never by a read-then-write race. Re-sending a batch whose reply was lost is detected by the
//!   unique event id and reported as [`es_core::AppendOutcome::AlreadyAppended`].
//! - **Global log**: ordered by `(transaction id, position)` and delivered only below the oldest
//!   running transaction, so a writer that commits late never makes a reader skip its events.
//!   The price: a long-running write transaction anywhere on the server delays readers (never
//!   loses an event). `docs/postgres.md` explains the table layout and this tradeoff.
//! - **Schema**: every table lives in one PostgreSQL schema ([`DEFAULT_SCHEMA`] unless set with
//!   [`PgStore::with_schema`]), with its own migration history, so several applications can
//!   share a database.
//! - **TLS** (default feature `tls-rustls`, with rustls): set `sslmode` and `sslrootcert` in the
//!   URL as with libpq; `verify-full` checks the server's certificate against the Mozilla roots
//!   and `sslrootcert`, and its host name. `docs/postgres.md` has the details and the caveats.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod append;
mod error;
mod notifier;
mod projection;
mod read;
mod replay;
mod schema;
mod sql;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::PgError;
pub use projection::{LockLost, PgLock};
pub use schema::DEFAULT_SCHEMA;
pub use store::{DEFAULT_HORIZON_WAIT, PgStore};

/// The PostgreSQL driver, re-exported so read models can name its types (`PgPool`,
/// `Transaction`, `query`) in the very version this crate uses.
pub use sqlx;
