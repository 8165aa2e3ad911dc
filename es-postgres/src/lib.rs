//! The production event store of `es`, on PostgreSQL (15 or newer).
//!
//! ```no_run
//! use es_core::{EventStore, ExpectedVersion, LogScope, NewEvent, Position, RawJson, StreamKey};
//! use es_postgres::{PgOptions, PgStore};
//! use uuid::Uuid;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Connects and migrates the tables of schema `billing` before returning.
//! let options = PgOptions::new().schema("billing")?;
//! let store = PgStore::connect_with("postgres://postgres@127.0.0.1:5432/postgres", options).await?;
//!
//! let event = NewEvent {
//!     event_id: Uuid::new_v4(),
//!     event_type: "Opened".to_owned(),
//!     schema_version: 1,
//!     payload: RawJson::from_string(r#"{"owner":"ada"}"#),
//!     metadata: RawJson::empty_object(),
//! };
//! // A stream is named by tenant, stream type and id; `StreamKey::new` is in tenant `default`.
//! let account = StreamKey::new("account", "account-1").in_tenant("acme");
//! store.append(account, ExpectedVersion::NoStream, vec![event]).await?;
//!
//! // The global log of one tenant (or of all), in an order no reader ever skips an event of.
//! let first_page = store.read_all(LogScope::Tenant("acme"), Position::START, 100).await?;
//! assert_eq!(first_page.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! [`PgStore`] implements [`es_core::EventStore`] (append under an expected version, stream
//! reads, the global log, events by id, snapshots) and
//! [`es_core::projection::ProjectionStore`] (checkpoints, dead letters, a transaction shared with
//! SQL read models, a per-projection lock whose holder's transactions are fenced, and live
//! notification). It passes both conformance suites of `es-core`, and checks its input with
//! [`es_core::contract`] before any round trip, so it accepts and refuses what every store does.
//!
//! - **Streams** are keyed by `(tenant, stream type, stream id)`: the primary key of the event
//!   table, which also decides concurrency conflicts (a racing writer fails with SQLSTATE 23505,
//!   never by a read-then-write race).
//! - **Append**: one statement and one round trip per batch. Re-sending a batch whose reply was
//!   lost is detected by the unique event id and reported as
//!   [`es_core::AppendOutcome::AlreadyAppended`].
//! - **Global log**: ordered by `(transaction id, position)` and delivered only below the oldest
//!   running transaction, so a writer that commits late never makes a reader skip its events; one
//!   tenant's log walks an index of its own. The price: a long-running write transaction anywhere
//!   on the server delays readers (never loses an event).
//! - **Opening**: [`PgStore::connect`] and [`PgStore::connect_with`] migrate the schema before
//!   they return (unless [`PgOptions::migrate`] is off); a store on a pool of yours
//!   ([`PgStore::new`], [`PgStore::with_options`]) migrates when you call [`PgStore::migrate`].
//!   Every table lives in one PostgreSQL schema ([`DEFAULT_SCHEMA`] unless set with
//!   [`PgOptions::schema`]), with its own migration history.
//! - **Tenant isolation** ([`PgOptions::tenant_isolation`]): row level security policies keyed to
//!   the setting `es.tenant`, which the store sets at the start of every transaction on a
//!   tenant's data, so a role that does not bypass row level security sees and writes one
//!   tenant's rows only.
//! - **Inbox** ([`es_core::integration::InboxStore`]): table `inbox` of the schema, keyed by
//!   consumer and event id, written in the consumer's transaction (`ON CONFLICT DO NOTHING`),
//!   so an integration event's SQL effects happen once; not tenant-scoped, so it has no row
//!   level security (a role that runs consumers needs `SELECT, INSERT` on it).
//! - **Errors**: a database out of reach or too busy is [`es_core::StoreError::Unavailable`]
//!   (see [`es_core::StoreError::is_transient`]); messages never quote payloads or the server's
//!   detail.
//!
//! - **TLS** (default feature `tls-rustls`, with rustls): set `sslmode` and `sslrootcert` in the
//!   URL as with libpq; `verify-full` checks the server's certificate against the Mozilla roots
//!   and `sslrootcert`, and its host name. `docs/postgres.md` has the details and the caveats.
//!
//! `docs/postgres.md` explains the tables, the log's ordering, tenant isolation and its roles,
//! fencing, TLS, and the tracing spans.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod append;
mod error;
mod notifier;
mod options;
mod projection;
mod read;
mod replay;
mod schema;
mod sql;
mod sql_store;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::PgError;
pub use options::{DEFAULT_HORIZON_WAIT, DEFAULT_MAX_CONNECTIONS, PgOptions};
pub use projection::PgLock;
pub use schema::DEFAULT_SCHEMA;
pub use store::PgStore;

/// The setting that scopes a transaction to a tenant under tenant isolation: the store runs
/// `SELECT set_config('es.tenant', $1, true)` first in every transaction on a tenant's data, and
/// the row level security policies compare each row's tenant with
/// `current_setting('es.tenant', true)`. SQL of your own on the store's tables sets it the same
/// way.
pub const TENANT_SETTING: &str = sql::TENANT_SETTING;

/// The PostgreSQL driver, re-exported so read models can name its types (`PgPool`,
/// `Transaction`, `query`) in the very version this crate uses.
pub use sqlx;
