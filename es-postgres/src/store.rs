//! [`PgStore`]: construction, schema, migrations, and the [`EventStore`] implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use es_core::{
    AppendOutcome, EventStore, EventStream, ExpectedVersion, NewEvent, Position, RecordedEvent,
};
use es_core::{ReplayedEvent, Snapshot, StoreError, Until};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::{Mutex, watch};

use crate::error::PgError;
use crate::schema::{self, CHANNEL_SUFFIX, DEFAULT_SCHEMA};
use crate::sql::{ADVISORY_KEY, Sql};

/// How long [`EventStore::read_all`] waits, by default, for running transactions that hold
/// back already committed events (see [`PgStore::with_horizon_wait`]).
pub const DEFAULT_HORIZON_WAIT: Duration = Duration::from_millis(500);

/// An event store in a PostgreSQL schema. Cheap to clone: clones share one pool.
///
/// Build it with [`PgStore::connect`] or [`PgStore::new`], pick a schema with
/// [`PgStore::with_schema`] (default [`DEFAULT_SCHEMA`]), and create or update its tables with
/// [`PgStore::migrate`] before first use.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    pub(crate) sql: Sql,
    /// The channel appends notify, `<schema>_events`.
    pub(crate) channel: String,
    pub(crate) horizon_wait: Duration,
    /// Notification counter fed by a background listener, started by the first
    /// `wait_for_events`; `None` until then.
    pub(crate) feed: Mutex<Option<watch::Receiver<u64>>>,
    /// The projections locked through this store and not released yet, with the backend that
    /// holds each lock: their transactions are fenced (see `projection::fence`).
    pub(crate) leases: Leases,
    /// Sends the notification of committed appends on `channel`, in the background.
    pub(crate) notifier: crate::notifier::Notifier,
}

/// Projection name -> process id of the backend holding its lock.
pub(crate) type Leases = Arc<std::sync::Mutex<HashMap<String, i32>>>;

impl PgStore {
    /// Connects a pool of up to 10 connections to `url` and uses schema [`DEFAULT_SCHEMA`].
    ///
    /// For other pool settings, build the pool yourself and use [`PgStore::new`].
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(url)
            .await
            .map_err(|source| PgError::Connect { source })?;
        Ok(Self::new(pool))
    }

    /// A store on `pool`, in schema [`DEFAULT_SCHEMA`].
    ///
    /// The store qualifies every table with its schema, so the pool's `search_path` does not
    /// matter. Live notification ([`ProjectionStore::wait_for_events`]) keeps one of the pool's
    /// connections for as long as the store lives.
    ///
    /// [`ProjectionStore::wait_for_events`]: es_core::projection::ProjectionStore::wait_for_events
    pub fn new(pool: PgPool) -> Self {
        Self::build(pool, DEFAULT_SCHEMA.to_owned(), DEFAULT_HORIZON_WAIT)
    }

    fn build(pool: PgPool, schema: String, horizon_wait: Duration) -> Self {
        let sql = Sql::new(&schema::quoted(&schema));
        let channel = format!("{schema}{CHANNEL_SUFFIX}");
        Self {
            inner: Arc::new(Inner {
                pool,
                schema,
                sql,
                channel,
                horizon_wait,
                feed: Mutex::new(None),
                leases: Leases::default(),
                notifier: crate::notifier::Notifier::default(),
            }),
        }
    }

    /// The same store in PostgreSQL schema `schema`, so applications can share a database.
    ///
    /// The name must be 1 to 56 lower-case ASCII letters, digits or underscores, must not start
    /// with a digit or `pg_`; anything else is [`PgError::InvalidSchema`].
    pub fn with_schema(self, schema: &str) -> Result<Self, PgError> {
        schema::validate(schema)?;
        Ok(Self::build(
            self.inner.pool.clone(),
            schema.to_owned(),
            self.inner.horizon_wait,
        ))
    }

    /// Sets how long [`EventStore::read_all`] waits for running transactions that hold back
    /// already committed events before it returns a short (possibly empty) page
    /// ([`DEFAULT_HORIZON_WAIT`] unless set). Zero: never wait.
    ///
    /// The global log only delivers transactions older than the oldest one still running, so
    /// that a late commit is never skipped. A transaction that runs long anywhere on the server
    /// therefore holds the log back; this bounds how long one read waits for it.
    pub fn with_horizon_wait(self, wait: Duration) -> Self {
        Self::build(self.inner.pool.clone(), self.inner.schema.clone(), wait)
    }

    /// The pool, for read models and queries of your own.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The PostgreSQL schema that holds the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The channel notified (`NOTIFY`, empty payload) after appends commit: `<schema>_events`.
    ///
    /// The store sends the notification from a background task right after the commit, not
    /// inside the appending transaction, and coalesces those of appends that commit while one is
    /// being sent: a listener gets at least one notification after the last append, not one per
    /// append.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Creates the schema if needed and applies the migrations it lacks; safe to run on every
    /// start and from several processes at once.
    ///
    /// The migration history is kept in `<schema>._sqlx_migrations`, so each schema migrates on
    /// its own. Runs on a connection of its own (taken from the pool and closed afterwards), so
    /// the pool's connections keep their settings.
    pub async fn migrate(&self) -> Result<(), PgError> {
        let schema = self.schema().to_owned();
        let error = |operation: &'static str| {
            let schema = schema.clone();
            move |source| PgError::Database {
                schema,
                operation,
                source,
            }
        };
        let mut connection = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|source| PgError::Connect { source })?
            .detach();
        let quoted = schema::quoted(&schema);
        // Serializes migrations of this schema only (sqlx's own lock covers the whole database).
        sqlx::query(&format!("SELECT pg_advisory_lock({ADVISORY_KEY})"))
            .bind(format!("es-postgres migrate {schema}"))
            .execute(&mut connection)
            .await
            .map_err(error("lock the schema for migration"))?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .execute(&mut connection)
            .await
            .map_err(error("create the schema"))?;
        // Unqualified names in the migrations, and sqlx's `_sqlx_migrations`, land in the schema.
        sqlx::query(&format!("SET search_path TO {quoted}"))
            .execute(&mut connection)
            .await
            .map_err(error("set the search path"))?;
        // The migrations in `migrations/`, embedded at compile time.
        let mut migrator = sqlx::migrate!();
        migrator.set_locking(false);
        let migrated = migrator
            .run_direct(&mut connection)
            .await
            .map_err(|source| PgError::Migrate {
                schema: schema.clone(),
                source,
            });
        // Closing the connection releases the advisory lock and forgets the search path.
        let closed = sqlx::Connection::close(connection).await;
        migrated?;
        if let Err(error) = closed {
            tracing::debug!(schema = %schema, %error, "migration connection did not close cleanly");
        }
        tracing::info!(schema = %schema, "schema migrated");
        Ok(())
    }
}

impl EventStore for PgStore {
    async fn append(
        &self,
        stream_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        crate::append::append(self, stream_type, stream_id, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        crate::read::read_stream(self, stream_id, from_version, until)
    }

    async fn replay_stream<E, F>(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
        visit: F,
    ) -> Result<u64, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        crate::replay::replay_stream(self, stream_id, from_version, until, visit).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, StoreError> {
        crate::read::stream_version(self, stream_id).await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        crate::read::read_all(self, after, limit).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        crate::read::save_snapshot(self, snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        crate::read::load_snapshot(self, stream_id).await
    }
}
