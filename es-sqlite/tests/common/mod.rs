//! Test support: stores on fresh files in temporary directories that disappear with the store,
//! and a small bank account aggregate.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use es_core::{
    AppendOutcome, EventStore, EventStream, ExpectedVersion, LogScope, NewEvent, Position, RawJson,
    RecordedEvent, ReplayedEvent, Snapshot, StoreError, StreamKey, Until,
};
use es_sqlite::{SqliteOptions, SqliteStore};
use uuid::Uuid;

/// A directory removed when the last [`TempStore`] clone using it is dropped.
#[derive(Debug, Clone)]
pub struct TempDir(Arc<tempfile::TempDir>);

impl TempDir {
    pub fn new() -> Self {
        Self(Arc::new(
            tempfile::tempdir().expect("a temporary directory"),
        ))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The database file of this directory.
    pub fn db(&self) -> PathBuf {
        self.path().join("es.db")
    }
}

/// A [`SqliteStore`] on a fresh file, keeping the file's directory alive: every store method
/// delegates to the inner store, overrides included.
#[derive(Debug, Clone)]
pub struct TempStore {
    pub store: SqliteStore,
    pub dir: TempDir,
}

impl TempStore {
    pub async fn new() -> Self {
        Self::with_options(SqliteOptions::new()).await
    }

    pub async fn with_options(options: SqliteOptions) -> Self {
        let dir = TempDir::new();
        let store = SqliteStore::open_with(dir.db(), options)
            .await
            .expect("a fresh store opens");
        Self { store, dir }
    }

    /// Another store instance on the same file, as a second process would open it.
    pub async fn second_instance(&self, options: SqliteOptions) -> SqliteStore {
        SqliteStore::open_with(self.dir.db(), options)
            .await
            .expect("the file opens again")
    }
}

impl EventStore for TempStore {
    fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send {
        self.store.append(stream, expected, events)
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        self.store.read_stream(stream, from_version, until)
    }

    fn replay_stream<E, F>(
        &self,
        stream: StreamKey<'_>,
        from_version: u64,
        until: Until,
        visit: F,
    ) -> impl Future<Output = Result<u64, E>> + Send
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        self.store.replay_stream(stream, from_version, until, visit)
    }

    fn stream_version(
        &self,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        self.store.stream_version(stream)
    }

    fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.store.read_all(scope, after, limit)
    }

    fn find_event(
        &self,
        scope: es_core::LogScope<'_>,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send {
        self.store.find_event(scope, event_id)
    }

    fn save_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.store.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.store.load_snapshot(stream)
    }
}

/// An event with a fresh id, type `event_type`, version 1 and an empty metadata object.
pub fn raw(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: RawJson::from(payload),
        metadata: RawJson::empty_object(),
    }
}

/// Stream `id` of type `numbers` in the default tenant.
pub fn numbers(id: &str) -> StreamKey<'_> {
    StreamKey::new("numbers", id)
}

/// Stream `id` of type `account` (the aggregate of [`bank`]) in the default tenant.
pub fn account(id: &str) -> StreamKey<'_> {
    StreamKey::new("account", id)
}

/// The whole global log.
pub async fn whole_log(store: &SqliteStore) -> Vec<RecordedEvent> {
    store
        .read_all(LogScope::AllTenants, Position::START, usize::MAX)
        .await
        .expect("the log reads")
}
