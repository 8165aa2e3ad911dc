//! [`PgStore`]: opening, migrations, sessions scoped to a tenant, and the [`EventStore`]
//! implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use es_core::{
    AppendOutcome, EventStore, EventStream, ExpectedVersion, LogScope, NewEvent, Position,
    RecordedEvent, ReplayedEvent, Snapshot, StoreError, StreamKey, Until,
};
use sqlx::Executor;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, Postgres};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::error::PgError;
use crate::options::PgOptions;
use crate::schema::{self, CHANNEL_SUFFIX};
use crate::sql::{ADVISORY_KEY, SET_TENANT, Sql};

/// An event store in a PostgreSQL schema. Cheap to clone: clones share one pool.
///
/// Open it with [`PgStore::connect`] (the default schema, migrated) or
/// [`PgStore::connect_with`] (your [`PgOptions`]); on a pool of yours, with [`PgStore::new`] or
/// [`PgStore::with_options`], then [`PgStore::migrate`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) options: PgOptions,
    pub(crate) sql: Sql,
    /// The channel appends notify, `<schema>_events`.
    pub(crate) channel: String,
    /// Notification counter fed by a background listener, started by the first
    /// `wait_for_events`; `None` until then.
    pub(crate) feed: Mutex<Option<watch::Receiver<u64>>>,
    /// The projections locked through this store and not released yet, with the backend that
    /// holds each lock.
    pub(crate) leases: Leases,
    /// Sends the notification of committed appends on `channel`, in the background.
    pub(crate) notifier: crate::notifier::Notifier,
}

/// Projection name -> process id of the backend holding its lock.
pub(crate) type Leases = Arc<std::sync::Mutex<HashMap<String, i32>>>;

impl PgStore {
    /// Connects a pool of up to [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS)
    /// connections to `url` and migrates schema [`DEFAULT_SCHEMA`](crate::DEFAULT_SCHEMA):
    /// [`PgStore::connect_with`] with [`PgOptions::default`].
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects a pool to `url` and opens the store with `options`: their schema, pool size,
    /// horizon wait and tenant isolation; migrates the schema first unless
    /// [`PgOptions::migrate`] is off.
    ///
    /// For other pool settings (timeouts, TLS, `application_name`), build the pool yourself and
    /// use [`PgStore::with_options`].
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, PgError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .connect(url)
            .await
            .map_err(|source| PgError::Connect { source })?;
        let migrate = options.migrate;
        let store = Self::with_options(pool, options);
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// A store on `pool`, in schema [`DEFAULT_SCHEMA`](crate::DEFAULT_SCHEMA), with the default
    /// options. Does not migrate: call [`PgStore::migrate`].
    pub fn new(pool: PgPool) -> Self {
        Self::with_options(pool, PgOptions::default())
    }

    /// A store on `pool` with `options` (their pool size and migration setting aside: the pool
    /// is yours). Does not migrate: call [`PgStore::migrate`].
    ///
    /// The store qualifies every table with its schema, so the pool's `search_path` does not
    /// matter. Live notification ([`ProjectionStore::wait_for_events`]) keeps one of the pool's
    /// connections for as long as the store lives.
    ///
    /// [`ProjectionStore::wait_for_events`]: es_core::projection::ProjectionStore::wait_for_events
    pub fn with_options(pool: PgPool, options: PgOptions) -> Self {
        let sql = Sql::new(&schema::quoted(&options.schema));
        let channel = format!("{}{CHANNEL_SUFFIX}", options.schema);
        Self {
            inner: Arc::new(Inner {
                pool,
                options,
                sql,
                channel,
                feed: Mutex::new(None),
                leases: Leases::default(),
                notifier: crate::notifier::Notifier::default(),
            }),
        }
    }

    /// The pool, for read models and queries of your own.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The options the store was opened with: clone and change them to open another store on
    /// the same schema.
    pub fn options(&self) -> &PgOptions {
        &self.inner.options
    }

    /// The PostgreSQL schema that holds the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.options.schema
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

    /// Creates the schema if needed and applies the migrations it lacks; with
    /// [tenant isolation](PgOptions::tenant_isolation), also enables row level security on the
    /// event and snapshot tables and creates their policies, unless already done. Safe to run on
    /// every start and from several processes at once; needs a role that may create the schema,
    /// or own it.
    ///
    /// The migration history is kept in `<schema>._sqlx_migrations`, so each schema migrates on
    /// its own. Runs on a connection of its own (taken from the pool and closed afterwards), so
    /// the pool's connections keep their settings.
    pub async fn migrate(&self) -> Result<(), PgError> {
        let schema = self.schema();
        let mut connection = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|source| PgError::Connect { source })?
            .detach();
        let migrated = self.migrate_on(&mut connection).await;
        // Closing the connection releases the advisory lock and forgets the search path.
        let closed = sqlx::Connection::close(connection).await;
        migrated?;
        if let Err(error) = closed {
            tracing::debug!(schema = %schema, %error, "migration connection did not close cleanly");
        }
        tracing::info!(schema = %schema, "schema migrated");
        Ok(())
    }

    async fn migrate_on(&self, connection: &mut PgConnection) -> Result<(), PgError> {
        let schema = self.schema();
        let error = |operation: &'static str| {
            move |source| PgError::Database {
                schema: schema.to_owned(),
                operation,
                source,
            }
        };
        let quoted = schema::quoted(schema);
        // Serializes migrations of this schema only (sqlx's own lock covers the whole database).
        sqlx::query(&format!("SELECT pg_advisory_lock({ADVISORY_KEY})"))
            .bind(format!("es-postgres migrate {schema}"))
            .execute(&mut *connection)
            .await
            .map_err(error("lock the schema for migration"))?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .execute(&mut *connection)
            .await
            .map_err(error("create the schema"))?;
        // Unqualified names in the migrations, and sqlx's `_sqlx_migrations`, land in the schema.
        sqlx::query(&format!("SET search_path TO {quoted}"))
            .execute(&mut *connection)
            .await
            .map_err(error("set the search path"))?;
        // The migrations in `migrations/`, embedded at compile time.
        let mut migrator = sqlx::migrate!();
        migrator.set_locking(false);
        migrator
            .run_direct(&mut *connection)
            .await
            .map_err(|source| PgError::Migrate {
                schema: schema.to_owned(),
                source,
            })?;
        if !self.inner.options.tenant_isolation {
            return Ok(());
        }
        let in_place: bool = sqlx::query_scalar(
            "SELECT count(*) = 2 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname IN ('events', 'snapshots') \
               AND c.relrowsecurity AND c.relforcerowsecurity \
               AND EXISTS (SELECT 1 FROM pg_policies p WHERE p.schemaname = $1 \
                 AND p.tablename = c.relname AND p.policyname = 'es_tenant_isolation')",
        )
        .bind(schema)
        .fetch_one(&mut *connection)
        .await
        .map_err(error("look for the row level security policies"))?;
        if !in_place {
            let policies = include_str!("sql/row_level_security.sql").replace("{schema}", &quoted);
            // One simple query: its statements run in one transaction.
            connection
                .execute(sqlx::raw_sql(&policies))
                .await
                .map_err(error("enable row level security"))?;
            tracing::info!(schema = %schema, "row level security enabled");
        }
        Ok(())
    }

    /// How long `read_all` waits for the horizon (see [`PgOptions::horizon_wait`]).
    pub(crate) fn horizon_wait(&self) -> Duration {
        self.inner.options.horizon_wait
    }

    /// Whether operations on a tenant's data run in transactions scoped to the tenant.
    pub(crate) fn isolates_tenants(&self) -> bool {
        self.inner.options.tenant_isolation
    }

    /// A connection for work on the data of `tenant`: with tenant isolation, a transaction
    /// scoped to the tenant (two round trips: `BEGIN` and the setting); otherwise a pooled
    /// connection, as `fetch(&pool)` would take.
    pub(crate) async fn session(&self, tenant: &str) -> Result<Session, sqlx::Error> {
        if self.isolates_tenants() {
            let mut transaction = self.inner.pool.begin().await?;
            sqlx::query(SET_TENANT)
                .bind(tenant)
                .execute(&mut *transaction)
                .await?;
            Ok(Session::Tenant(transaction))
        } else {
            Ok(Session::Pooled(self.inner.pool.acquire().await?))
        }
    }

    /// A connection for work on the log of `scope`: scoped to its tenant as
    /// [`session`](Self::session) does, unscoped for every tenant's log.
    pub(crate) async fn scope_session(&self, scope: LogScope<'_>) -> Result<Session, sqlx::Error> {
        match scope {
            LogScope::Tenant(tenant) => self.session(tenant).await,
            LogScope::AllTenants => Ok(Session::Pooled(self.inner.pool.acquire().await?)),
        }
    }
}

/// Where statements about one tenant's data run (see [`PgStore::session`]).
#[derive(Debug)]
pub(crate) enum Session {
    /// A connection of the pool, in autocommit.
    Pooled(PoolConnection<Postgres>),
    /// A transaction scoped to a tenant; dropping it rolls it back.
    Tenant(sqlx::Transaction<'static, Postgres>),
}

impl Session {
    pub(crate) fn connection(&mut self) -> &mut PgConnection {
        match self {
            Session::Pooled(connection) => connection,
            Session::Tenant(transaction) => transaction,
        }
    }

    /// Commits the work: a round trip under tenant isolation, nothing otherwise.
    pub(crate) async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Session::Pooled(_) => Ok(()),
            Session::Tenant(transaction) => transaction.commit().await,
        }
    }
}

impl EventStore for PgStore {
    async fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        crate::append::append(self, stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        crate::read::read_stream(self, stream, from_version, until)
    }

    async fn replay_stream<E, F>(
        &self,
        stream: StreamKey<'_>,
        from_version: u64,
        until: Until,
        visit: F,
    ) -> Result<u64, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        crate::replay::replay_stream(self, stream, from_version, until, visit).await
    }

    async fn stream_version(&self, stream: StreamKey<'_>) -> Result<Option<u64>, StoreError> {
        crate::read::stream_version(self, stream).await
    }

    async fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        crate::read::read_all(self, scope, after, limit).await
    }

    async fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        crate::read::find_event(self, scope, event_id).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        crate::read::save_snapshot(self, snapshot).await
    }

    async fn load_snapshot(&self, stream: StreamKey<'_>) -> Result<Option<Snapshot>, StoreError> {
        crate::read::load_snapshot(self, stream).await
    }
}
