//! Test support: stores on fresh files in temporary directories that disappear with the store.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use es_core::{
    AppendOutcome, EventStore, EventStream, ExpectedVersion, NewEvent, Position, RawJson,
    RecordedEvent, Snapshot, StoreError, Until,
};
use es_sqlite::{SqliteOptions, SqliteStore};

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
/// delegates to the inner store.
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
        stream_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send {
        self.store.append(stream_type, stream_id, expected, events)
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        self.store.read_stream(stream_id, from_version, until)
    }

    fn stream_version(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        self.store.stream_version(stream_id)
    }

    fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.store.read_all(after, limit)
    }

    fn save_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.store.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.store.load_snapshot(stream_id)
    }
}

/// An event with a fresh id, type `event_type`, version 1 and an empty metadata object.
pub fn raw(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: RawJson::from(payload),
        metadata: RawJson::empty_object(),
    }
}
