//! [`DynStore`]: any store behind one type, chosen at run time.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::envelope::{NewEvent, Position, RecordedEvent};
use crate::integration::InboxStore;
use crate::projection::{DeadLetter, ProjectionStore};
use crate::sql::{SqlDialect, SqlRow, SqlStore, SqlValue};
use crate::store::{
    AppendOutcome, EventStore, EventStream, ExpectedVersion, ReplayedEvent, Snapshot, StoreError,
    Until,
};
use crate::stream::{LogScope, StreamKey};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any store, behind one cheap-to-clone type, chosen at run time.
///
/// A service that picks SQLite or PostgreSQL from its configuration would otherwise be generic
/// over the store in every handler. `DynStore` erases the store's type (as tower's
/// `BoxCloneService` erases a service's): it implements [`EventStore`], [`ProjectionStore`],
/// [`SqlStore`] and [`InboxStore`] by forwarding to the store it was made from, at the cost of
/// one allocation per call. Which of the last two the store keeps depends on the constructor:
/// [`DynStore::new`], [`DynStore::new_sql`], [`DynStore::new_with_inbox`] or
/// [`DynStore::new_sql_with_inbox`].
///
/// ```
/// use es_core::{DynStore, MemoryStore};
///
/// let store = DynStore::new(MemoryStore::new()); // or DynStore::new_sql(SqliteStore / PgStore)
/// let same = store.clone();
/// # let _ = same;
/// ```
#[derive(Clone)]
pub struct DynStore {
    inner: Arc<dyn Erased>,
}

impl fmt::Debug for DynStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynStore")
            .field("store", &self.inner.type_name())
            .finish()
    }
}

/// A transaction of the store inside a [`DynStore`].
pub struct DynTransaction {
    transaction: Box<dyn Any + Send>,
    /// The store that began it, which runs its SQL.
    store: Arc<dyn Erased>,
}

impl DynTransaction {
    /// The store's own transaction, when it is a `T` (for example
    /// `sqlx::Transaction<'static, sqlx::Sqlite>` under a `SqliteStore`).
    pub fn downcast_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.transaction.downcast_mut()
    }
}

impl fmt::Debug for DynTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DynTransaction")
    }
}

/// A projection lock of the store inside a [`DynStore`].
pub struct DynLock(Box<dyn Any + Send + Sync>);

impl fmt::Debug for DynLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DynLock")
    }
}

impl DynStore {
    /// Erases `store`'s type. [`SqlStore`] calls on the result fail: use
    /// [`new_sql`](Self::new_sql) for a SQL store.
    pub fn new<S>(store: S) -> Self
    where
        S: ProjectionStore,
        S::Transaction: 'static,
        S::Lock: Sync + 'static,
    {
        Self {
            inner: Arc::new(Typed {
                store,
                sql: None,
                inbox: None,
            }),
        }
    }

    /// Erases the type of a store with an inbox, keeping its inbox: consumers
    /// ([`Consumer`](crate::integration::Consumer)) run on the result.
    pub fn new_with_inbox<S>(store: S) -> Self
    where
        S: InboxStore,
        S::Transaction: 'static,
        S::Lock: Sync + 'static,
    {
        Self {
            inner: Arc::new(Typed {
                store,
                sql: None,
                inbox: Some(record_processed::<S>),
            }),
        }
    }

    /// Erases the type of a SQL store with an inbox (SQLite, PostgreSQL), keeping both: SQL read
    /// models and consumers run on the result.
    pub fn new_sql_with_inbox<S>(store: S) -> Self
    where
        S: SqlStore + InboxStore,
        S::Transaction: 'static,
        S::Lock: Sync + 'static,
    {
        Self {
            inner: Arc::new(Typed {
                store,
                sql: Some(SqlFns::of()),
                inbox: Some(record_processed::<S>),
            }),
        }
    }

    /// Erases a SQL store's type, keeping its SQL: SQL read models run on the result.
    pub fn new_sql<S>(store: S) -> Self
    where
        S: SqlStore,
        S::Transaction: 'static,
        S::Lock: Sync + 'static,
    {
        Self {
            inner: Arc::new(Typed {
                store,
                sql: Some(SqlFns::of()),
                inbox: None,
            }),
        }
    }

    /// The store inside, when it is an `S`: for what only that store offers (its pool, say).
    pub fn downcast_ref<S>(&self) -> Option<&S>
    where
        S: ProjectionStore,
        S::Transaction: 'static,
        S::Lock: Sync + 'static,
    {
        self.inner
            .as_any()
            .downcast_ref::<Typed<S>>()
            .map(|typed| &typed.store)
    }
}

/// How a replay through the erased store stopped.
enum Replay {
    Store(StoreError),
    Visitor,
}

impl From<StoreError> for Replay {
    fn from(error: StoreError) -> Self {
        Replay::Store(error)
    }
}

type Visit<'a> = dyn FnMut(ReplayedEvent<'_>) -> Result<(), ()> + Send + 'a;

/// The object-safe mirror of the store traits.
trait Erased: Send + Sync + 'static {
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn append<'a>(
        &'a self,
        stream: StreamKey<'a>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendOutcome, StoreError>>;
    fn read_stream<'a>(&'a self, stream: StreamKey<'a>, from: u64, until: Until)
    -> EventStream<'a>;
    fn replay_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from: u64,
        until: Until,
        visit: &'a mut Visit<'_>,
    ) -> BoxFuture<'a, Result<u64, Replay>>;
    fn stream_version<'a>(
        &'a self,
        stream: StreamKey<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    fn read_all<'a>(
        &'a self,
        scope: LogScope<'a>,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;
    fn find_event<'a>(
        &'a self,
        scope: LogScope<'a>,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RecordedEvent>, StoreError>>;
    fn save_snapshot<'a>(&'a self, snapshot: &'a Snapshot)
    -> BoxFuture<'a, Result<(), StoreError>>;
    fn load_snapshot<'a>(
        &'a self,
        stream: StreamKey<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;
    fn begin<'a>(
        &'a self,
        scope: LogScope<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>, StoreError>>;
    fn commit(&self, transaction: DynTransaction) -> BoxFuture<'_, Result<(), StoreError>>;
    fn load_checkpoint<'a>(
        &'a self,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Position>, StoreError>>;
    fn save_checkpoint<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        projection: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn park<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        dead_letter: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn unpark<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        projection: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn reset_projection<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn dead_letters<'a>(
        &'a self,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>>;
    fn try_lock<'a>(
        &'a self,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<Option<DynLock>, StoreError>>;
    fn fence<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        lock: &'a DynLock,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn release(&self, lock: DynLock) -> BoxFuture<'_, Result<(), StoreError>>;
    fn count_after<'a>(
        &'a self,
        scope: LogScope<'a>,
        after: Position,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    fn wait_for_events<'a>(
        &'a self,
        scope: LogScope<'a>,
        after: Position,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn dialect(&self) -> Option<SqlDialect>;
    fn execute<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        statement: &'a str,
        params: &'a [SqlValue],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    fn query_in<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        statement: &'a str,
        params: &'a [SqlValue],
    ) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>>;
    fn query<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [SqlValue],
    ) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>>;
    fn record_processed<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// A store and, for a SQL store, its SQL methods; for a store with an inbox, its inbox.
struct Typed<S: ProjectionStore> {
    store: S,
    sql: Option<SqlFns<S>>,
    inbox: Option<RecordProcessed<S>>,
}

type RecordProcessed<S> = for<'a> fn(
    &'a S,
    &'a mut <S as ProjectionStore>::Transaction,
    &'a str,
    Uuid,
) -> BoxFuture<'a, Result<bool, StoreError>>;

fn record_processed<'a, S: InboxStore>(
    store: &'a S,
    transaction: &'a mut S::Transaction,
    consumer: &'a str,
    event_id: Uuid,
) -> BoxFuture<'a, Result<bool, StoreError>> {
    Box::pin(store.record_processed(transaction, consumer, event_id))
}

impl<S: SqlStore> SqlFns<S> {
    fn of() -> Self {
        SqlFns {
            dialect: S::dialect,
            execute: execute_sql::<S>,
            query_in: query_sql_in::<S>,
            query: query_sql::<S>,
        }
    }
}

type Execute<S> = for<'a> fn(
    &'a mut <S as ProjectionStore>::Transaction,
    &'a str,
    &'a [SqlValue],
) -> BoxFuture<'a, Result<u64, StoreError>>;
type QueryIn<S> = for<'a> fn(
    &'a mut <S as ProjectionStore>::Transaction,
    &'a str,
    &'a [SqlValue],
) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>>;
type Query<S> =
    for<'a> fn(&'a S, &'a str, &'a [SqlValue]) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>>;

/// The [`SqlStore`] methods of `S`, captured where `S: SqlStore` is known.
struct SqlFns<S: ProjectionStore> {
    dialect: fn(&S) -> SqlDialect,
    execute: Execute<S>,
    query_in: QueryIn<S>,
    query: Query<S>,
}

fn execute_sql<'a, S: SqlStore>(
    transaction: &'a mut S::Transaction,
    statement: &'a str,
    params: &'a [SqlValue],
) -> BoxFuture<'a, Result<u64, StoreError>> {
    Box::pin(S::execute(transaction, statement, params))
}

fn query_sql_in<'a, S: SqlStore>(
    transaction: &'a mut S::Transaction,
    statement: &'a str,
    params: &'a [SqlValue],
) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>> {
    Box::pin(S::query_in(transaction, statement, params))
}

fn query_sql<'a, S: SqlStore>(
    store: &'a S,
    statement: &'a str,
    params: &'a [SqlValue],
) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>> {
    Box::pin(store.query(statement, params))
}

fn foreign(what: &str) -> StoreError {
    StoreError::backend(
        what.to_owned(),
        "it belongs to another store than this DynStore's",
    )
}

fn no_sql(type_name: &str) -> StoreError {
    StoreError::backend(
        "run a SQL statement",
        format!(
            "`{type_name}` is not a SQL store (or was erased with `DynStore::new`, not `DynStore::new_sql`)"
        ),
    )
}

fn no_inbox(type_name: &str) -> StoreError {
    StoreError::backend(
        "record a processed event",
        format!(
            "`{type_name}` keeps no inbox (or was erased with `DynStore::new` or `new_sql`, not `new_with_inbox` or `new_sql_with_inbox`)"
        ),
    )
}

impl<S> Typed<S>
where
    S: ProjectionStore,
    S::Transaction: 'static,
    S::Lock: Sync + 'static,
{
    fn transaction(transaction: &mut DynTransaction) -> Result<&mut S::Transaction, StoreError> {
        transaction
            .downcast_mut::<S::Transaction>()
            .ok_or_else(|| foreign("use a transaction"))
    }
}

impl<S> Erased for Typed<S>
where
    S: ProjectionStore,
    S::Transaction: 'static,
    S::Lock: Sync + 'static,
{
    fn type_name(&self) -> &'static str {
        std::any::type_name::<S>()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn append<'a>(
        &'a self,
        stream: StreamKey<'a>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendOutcome, StoreError>> {
        Box::pin(self.store.append(stream, expected, events))
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from: u64,
        until: Until,
    ) -> EventStream<'a> {
        self.store.read_stream(stream, from, until)
    }

    fn replay_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from: u64,
        until: Until,
        visit: &'a mut Visit<'_>,
    ) -> BoxFuture<'a, Result<u64, Replay>> {
        Box::pin(self.store.replay_stream(stream, from, until, move |event| {
            visit(event).map_err(|()| Replay::Visitor)
        }))
    }

    fn stream_version<'a>(
        &'a self,
        stream: StreamKey<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(self.store.stream_version(stream))
    }

    fn read_all<'a>(
        &'a self,
        scope: LogScope<'a>,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(self.store.read_all(scope, after, limit))
    }

    fn find_event<'a>(
        &'a self,
        scope: LogScope<'a>,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RecordedEvent>, StoreError>> {
        Box::pin(self.store.find_event(scope, event_id))
    }

    fn save_snapshot<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.store.save_snapshot(snapshot))
    }

    fn load_snapshot<'a>(
        &'a self,
        stream: StreamKey<'a>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(self.store.load_snapshot(stream))
    }

    fn begin<'a>(
        &'a self,
        scope: LogScope<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>, StoreError>> {
        Box::pin(async move {
            let transaction = self.store.begin(scope).await?;
            Ok(Box::new(transaction) as Box<dyn Any + Send>)
        })
    }

    fn commit(&self, transaction: DynTransaction) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let transaction = transaction
                .transaction
                .downcast::<S::Transaction>()
                .map_err(|_| foreign("commit a transaction"))?;
            self.store.commit(*transaction).await
        })
    }

    fn load_checkpoint<'a>(
        &'a self,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Position>, StoreError>> {
        Box::pin(self.store.load_checkpoint(projection))
    }

    fn save_checkpoint<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        projection: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let transaction = Self::transaction(transaction)?;
            self.store
                .save_checkpoint(transaction, projection, position)
                .await
        })
    }

    fn park<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        dead_letter: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let transaction = Self::transaction(transaction)?;
            self.store.park(transaction, dead_letter).await
        })
    }

    fn unpark<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        projection: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let transaction = Self::transaction(transaction)?;
            self.store.unpark(transaction, projection, position).await
        })
    }

    fn reset_projection<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let transaction = Self::transaction(transaction)?;
            self.store.reset_projection(transaction, projection).await
        })
    }

    fn dead_letters<'a>(
        &'a self,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(self.store.dead_letters(projection))
    }

    fn try_lock<'a>(
        &'a self,
        projection: &'a str,
    ) -> BoxFuture<'a, Result<Option<DynLock>, StoreError>> {
        Box::pin(async move {
            let lock = self.store.try_lock(projection).await?;
            Ok(lock.map(|lock| DynLock(Box::new(lock))))
        })
    }

    fn fence<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        lock: &'a DynLock,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let transaction = Self::transaction(transaction)?;
            let lock = lock
                .0
                .downcast_ref::<S::Lock>()
                .ok_or_else(|| foreign("check a projection lock"))?;
            self.store.fence(transaction, lock).await
        })
    }

    fn release(&self, lock: DynLock) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let lock = lock
                .0
                .downcast::<S::Lock>()
                .map_err(|_| foreign("release a projection lock"))?;
            self.store.release(*lock).await
        })
    }

    fn count_after<'a>(
        &'a self,
        scope: LogScope<'a>,
        after: Position,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.store.count_after(scope, after))
    }

    fn wait_for_events<'a>(
        &'a self,
        scope: LogScope<'a>,
        after: Position,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.store.wait_for_events(scope, after, timeout))
    }

    fn dialect(&self) -> Option<SqlDialect> {
        self.sql.as_ref().map(|sql| (sql.dialect)(&self.store))
    }

    fn execute<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        statement: &'a str,
        params: &'a [SqlValue],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let Some(sql) = &self.sql else {
            return Box::pin(std::future::ready(Err(no_sql(self.type_name()))));
        };
        match Self::transaction(transaction) {
            Ok(transaction) => (sql.execute)(transaction, statement, params),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    fn query_in<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        statement: &'a str,
        params: &'a [SqlValue],
    ) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>> {
        let Some(sql) = &self.sql else {
            return Box::pin(std::future::ready(Err(no_sql(self.type_name()))));
        };
        match Self::transaction(transaction) {
            Ok(transaction) => (sql.query_in)(transaction, statement, params),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    fn query<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [SqlValue],
    ) -> BoxFuture<'a, Result<Vec<SqlRow>, StoreError>> {
        match &self.sql {
            Some(sql) => (sql.query)(&self.store, statement, params),
            None => Box::pin(std::future::ready(Err(no_sql(self.type_name())))),
        }
    }

    fn record_processed<'a>(
        &'a self,
        transaction: &'a mut DynTransaction,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let Some(record) = self.inbox else {
            return Box::pin(std::future::ready(Err(no_inbox(self.type_name()))));
        };
        match Self::transaction(transaction) {
            Ok(transaction) => record(&self.store, transaction, consumer, event_id),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

impl EventStore for DynStore {
    async fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        self.inner.read_stream(stream, from_version, until)
    }

    async fn replay_stream<E, F>(
        &self,
        stream: StreamKey<'_>,
        from_version: u64,
        until: Until,
        mut visit: F,
    ) -> Result<u64, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        // The visitor's error waits here while the erased replay stops with a marker.
        let mut stopped: Option<E> = None;
        let mut erased = |event: ReplayedEvent<'_>| {
            visit(event).map_err(|error| {
                stopped = Some(error);
            })
        };
        let replayed = self
            .inner
            .replay_stream(stream, from_version, until, &mut erased)
            .await;
        match replayed {
            Ok(count) => Ok(count),
            Err(Replay::Store(error)) => Err(E::from(error)),
            Err(Replay::Visitor) => Err(stopped.take().unwrap_or_else(|| {
                E::from(StoreError::backend(
                    "replay a stream",
                    "the replay stopped without the visitor's error",
                ))
            })),
        }
    }

    async fn stream_version(&self, stream: StreamKey<'_>) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(scope, after, limit).await
    }

    async fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.find_event(scope, event_id).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: StreamKey<'_>) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }
}

impl ProjectionStore for DynStore {
    type Transaction = DynTransaction;
    type Lock = DynLock;

    async fn begin(&self, scope: LogScope<'_>) -> Result<DynTransaction, StoreError> {
        let transaction = self.inner.begin(scope).await?;
        Ok(DynTransaction {
            transaction,
            store: self.inner.clone(),
        })
    }

    async fn commit(&self, transaction: DynTransaction) -> Result<(), StoreError> {
        self.inner.commit(transaction).await
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        self.inner.load_checkpoint(projection).await
    }

    async fn save_checkpoint(
        &self,
        transaction: &mut DynTransaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        self.inner
            .save_checkpoint(transaction, projection, position)
            .await
    }

    async fn park(
        &self,
        transaction: &mut DynTransaction,
        dead_letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        self.inner.park(transaction, dead_letter).await
    }

    async fn unpark(
        &self,
        transaction: &mut DynTransaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        self.inner.unpark(transaction, projection, position).await
    }

    async fn reset_projection(
        &self,
        transaction: &mut DynTransaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        self.inner.reset_projection(transaction, projection).await
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(projection).await
    }

    async fn try_lock(&self, projection: &str) -> Result<Option<DynLock>, StoreError> {
        self.inner.try_lock(projection).await
    }

    async fn fence(
        &self,
        transaction: &mut DynTransaction,
        lock: &DynLock,
    ) -> Result<(), StoreError> {
        self.inner.fence(transaction, lock).await
    }

    async fn release(&self, lock: DynLock) -> Result<(), StoreError> {
        self.inner.release(lock).await
    }

    async fn count_after(&self, scope: LogScope<'_>, after: Position) -> Result<u64, StoreError> {
        self.inner.count_after(scope, after).await
    }

    async fn wait_for_events(
        &self,
        scope: LogScope<'_>,
        after: Position,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        self.inner.wait_for_events(scope, after, timeout).await
    }
}

impl InboxStore for DynStore {
    /// Records through the store inside. A `DynStore` made with [`DynStore::new`] or
    /// [`DynStore::new_sql`] has no inbox: it fails here with [`StoreError::Backend`].
    async fn record_processed(
        &self,
        transaction: &mut DynTransaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, StoreError> {
        let store = transaction.store.clone();
        store
            .record_processed(transaction, consumer, event_id)
            .await
    }
}

impl SqlStore for DynStore {
    /// The dialect of the store inside. A `DynStore` made with [`DynStore::new`] is not a SQL
    /// store: it answers [`SqlDialect::Sqlite`] here and fails every statement.
    fn dialect(&self) -> SqlDialect {
        self.inner.dialect().unwrap_or(SqlDialect::Sqlite)
    }

    async fn execute(
        transaction: &mut DynTransaction,
        statement: &str,
        params: &[SqlValue],
    ) -> Result<u64, StoreError> {
        let store = transaction.store.clone();
        store.execute(transaction, statement, params).await
    }

    async fn query_in(
        transaction: &mut DynTransaction,
        statement: &str,
        params: &[SqlValue],
    ) -> Result<Vec<SqlRow>, StoreError> {
        let store = transaction.store.clone();
        store.query_in(transaction, statement, params).await
    }

    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, StoreError> {
        self.inner.query(statement, params).await
    }
}
