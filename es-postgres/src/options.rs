//! [`PgOptions`]: what a store is opened with, chosen before it touches the database.

use std::time::Duration;

use crate::error::PgError;
use crate::schema::{self, DEFAULT_SCHEMA};

/// How long [`EventStore::read_all`](es_core::EventStore::read_all) waits, by default, for
/// running transactions that hold back already committed events (see
/// [`PgOptions::horizon_wait`]).
pub const DEFAULT_HORIZON_WAIT: Duration = Duration::from_millis(500);

/// How many connections [`PgStore::connect`](crate::PgStore::connect) opens at most, unless set
/// with [`PgOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// The settings of a [`PgStore`](crate::PgStore), given when it is opened:
/// [`PgStore::connect_with`](crate::PgStore::connect_with) on a URL, or
/// [`PgStore::with_options`](crate::PgStore::with_options) on a pool of yours.
///
/// | setting | default | applies to |
/// |---|---|---|
/// | [`schema`](Self::schema) | [`DEFAULT_SCHEMA`] (`es`) | every store |
/// | [`horizon_wait`](Self::horizon_wait) | [`DEFAULT_HORIZON_WAIT`] | every store |
/// | [`tenant_isolation`](Self::tenant_isolation) | off | every store |
/// | [`max_connections`](Self::max_connections) | [`DEFAULT_MAX_CONNECTIONS`] | `connect_with` (a pool of yours keeps its own size) |
/// | [`migrate`](Self::migrate) | on | `connect_with` (on a pool of yours, call [`PgStore::migrate`](crate::PgStore::migrate)) |
///
/// ```
/// use es_postgres::PgOptions;
///
/// let options = PgOptions::new()
///     .schema("billing")?
///     .max_connections(20)
///     .tenant_isolation(true);
/// assert!(PgOptions::new().schema("Billing").is_err()); // lower case only
/// # Ok::<(), es_postgres::PgError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    pub(crate) schema: String,
    pub(crate) max_connections: u32,
    pub(crate) migrate: bool,
    pub(crate) horizon_wait: Duration,
    pub(crate) tenant_isolation: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            migrate: true,
            horizon_wait: DEFAULT_HORIZON_WAIT,
            tenant_isolation: false,
        }
    }
}

impl PgOptions {
    /// The defaults: schema `es`, 10 connections, migrate on connect, a 500 ms horizon wait,
    /// no tenant isolation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the store's tables in PostgreSQL schema `schema`, so applications can share a
    /// database; every schema has its own tables and migration history.
    ///
    /// The name must be 1 to 56 lower-case ASCII letters, digits or underscores, and must not
    /// start with a digit or `pg_`; anything else is [`PgError::InvalidSchema`].
    pub fn schema(mut self, schema: &str) -> Result<Self, PgError> {
        schema::validate(schema)?;
        self.schema = schema.to_owned();
        Ok(self)
    }

    /// The most connections [`PgStore::connect_with`](crate::PgStore::connect_with) opens
    /// (at least 1). Live notification keeps one of them once a projection waits for events.
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections.max(1);
        self
    }

    /// Whether [`PgStore::connect_with`](crate::PgStore::connect_with) migrates the schema
    /// before it returns (on by default). Turn it off for a role that may not change the schema:
    /// the tables are then migrated by another role, with [`PgStore::migrate`](crate::PgStore::migrate).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// How long `read_all` waits for running transactions that hold back already committed
    /// events before it returns a short (possibly empty) page. Zero: never wait.
    ///
    /// The global log only delivers transactions older than the oldest one still running, so
    /// that a late commit is never skipped. A transaction that runs long anywhere on the server
    /// therefore holds the log back; this bounds how long one read waits for it.
    pub fn horizon_wait(mut self, wait: Duration) -> Self {
        self.horizon_wait = wait;
        self
    }

    /// Whether tenants are isolated by row level security (off by default).
    ///
    /// On: every operation on a tenant's data runs in a transaction that first scopes itself to
    /// the tenant (`SELECT set_config('es.tenant', $1, true)`), so that the policies
    /// [`PgStore::migrate`](crate::PgStore::migrate) then creates on the event and snapshot
    /// tables let it see and write that tenant's rows only. An append costs three more round
    /// trips (`BEGIN`, the setting, `COMMIT`). Reads of every tenant's log set no tenant: they
    /// need a role that bypasses row level security. See docs/postgres.md.
    pub fn tenant_isolation(mut self, on: bool) -> Self {
        self.tenant_isolation = on;
        self
    }
}
