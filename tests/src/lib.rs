//! Cross-crate tests live in `tests/`; this library holds what several of them share.
//!
//! [`Hooked`] is a store that passes every [`EventStore`] call to another store, and lets a test
//! act around some of them through [`Hooks`]: write first as a rival would, hold snapshot saves
//! back, record which reads a command made. One wrapper delegates the whole trait, so a test
//! names only what it changes, and a method added to the trait is delegated in one place.

use std::future::Future;

use es_core::{
    AppendOutcome, EventStore, EventStream, ExpectedVersion, LogScope, NewEvent, Position,
    RecordedEvent, ReplayedEvent, Snapshot, StoreError, StreamKey, Until,
};
use uuid::Uuid;

/// What a test does around the calls a [`Hooked`] store passes on to its inner store `S`. Every
/// hook does nothing unless overridden.
pub trait Hooks<S: EventStore>: Clone + Send + Sync + 'static {
    /// Runs before an append to `stream` is passed on; an error fails the append unwritten.
    fn before_append(
        &self,
        inner: &S,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (inner, stream);
        async { Ok(()) }
    }

    /// Called when a read of `stream` from `from_version` on is passed on, by
    /// [`EventStore::read_stream`] or [`EventStore::replay_stream`] (what a load reads).
    fn on_read(&self, stream: StreamKey<'_>, from_version: u64) {
        let _ = (stream, from_version);
    }

    /// Runs before a snapshot save is passed on.
    fn before_save_snapshot(&self, snapshot: &Snapshot) -> impl Future<Output = ()> + Send {
        let _ = snapshot;
        async {}
    }
}

/// A store that passes every call to `inner`, running `hooks` around some of them.
#[derive(Debug, Clone)]
pub struct Hooked<S, H> {
    /// The store every call goes to.
    pub inner: S,
    /// What runs around the calls.
    pub hooks: H,
}

impl<S, H> Hooked<S, H> {
    /// `inner` with `hooks`.
    pub fn new(inner: S, hooks: H) -> Self {
        Self { inner, hooks }
    }
}

impl<S: EventStore, H: Hooks<S>> EventStore for Hooked<S, H> {
    async fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.hooks.before_append(&self.inner, stream).await?;
        self.inner.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        self.hooks.on_read(stream, from_version);
        self.inner.read_stream(stream, from_version, until)
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
        self.hooks.on_read(stream, from_version);
        self.inner.replay_stream(stream, from_version, until, visit)
    }

    fn stream_version(
        &self,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        self.inner.stream_version(stream)
    }

    fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_all(scope, after, limit)
    }

    async fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.find_event(scope, event_id).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.hooks.before_save_snapshot(snapshot).await;
        self.inner.save_snapshot(snapshot).await
    }

    fn load_snapshot(
        &self,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.inner.load_snapshot(stream)
    }
}
