//! [`Repository`]: loads aggregates from a store and executes commands on them.

mod cache;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Handle};
use crate::envelope::{CommandContext, NewEvent, Position};
use crate::event::{DecodeError, Event};
use crate::json::RawJson;
use crate::store::{
    AppendedRange, EventStore, ExpectedVersion, ReplayedEvent, Snapshot, StoreError, Until,
};

use self::cache::StateCache;

/// How many times [`Repository::execute`] decides again after a concurrency conflict, unless
/// set with [`Repository::with_max_retries`].
pub const DEFAULT_MAX_RETRIES: u32 = 10;

/// An aggregate's state and the stream version it reflects (0: no events yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it.
    pub version: u64,
}

/// What an executed command did.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The events the command produced, in order (empty: nothing to do).
    pub events: Vec<A::Event>,
    /// Their ids, in the same order.
    pub event_ids: Vec<Uuid>,
    /// The stream version of the first new event (the current version + 1 if none).
    pub first_version: u64,
    /// The stream version after the command.
    pub version: u64,
    /// The global position of the last new event (`None` if none).
    pub last_position: Option<Position>,
    /// The state after the command.
    pub state: A,
    /// How many concurrency conflicts were met (and retried) before it went through, not
    /// counting one met by a cached or assumed state that was behind the stream.
    pub conflicts: u32,
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be decoded.
    #[error(
        "failed to decode event `{event_type}` at version {stream_version} of stream `{stream_id}`: {source}"
    )]
    Decode {
        /// The stream.
        stream_id: String,
        /// The event's stream version.
        stream_version: u64,
        /// The stored event type.
        event_type: String,
        /// Why decoding failed.
        source: DecodeError,
    },
    /// The stream belongs to another aggregate type.
    #[error(
        "stream `{stream_id}` holds `{actual}` events at version {stream_version}, not `{expected}` events"
    )]
    WrongStreamType {
        /// The stream.
        stream_id: String,
        /// The aggregate type loading it.
        expected: &'static str,
        /// The stored stream type.
        actual: String,
        /// The first event of the wrong type.
        stream_version: u64,
    },
    /// The store returned versions out of sequence.
    #[error("stream `{stream_id}` jumps from version {previous} to {found}")]
    VersionGap {
        /// The stream.
        stream_id: String,
        /// The last version folded.
        previous: u64,
        /// The version read next.
        found: u64,
    },
    /// The aggregate id cannot name a stream.
    #[error("invalid aggregate id {id:?}: {reason}")]
    InvalidId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a command was not executed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The aggregate rejected the command (a domain error); nothing was written.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// The aggregate could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An event produced by the command could not be serialized.
    #[error("failed to encode event `{event_type}` for stream `{stream_id}`: {source}")]
    Encode {
        /// The stream.
        stream_id: String,
        /// The event type.
        event_type: &'static str,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// Every attempt met a concurrent write; nothing was written.
    #[error(
        "gave up on stream `{stream_id}` after {attempts} attempts, each met a concurrent write"
    )]
    TooManyConflicts {
        /// The stream.
        stream_id: String,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// The store failed while appending.
    #[error(transparent)]
    Store(StoreError),
}

impl<E> ExecuteError<E> {
    /// The domain error, if the command was rejected.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            ExecuteError::Rejected(error) => Some(error),
            _ => None,
        }
    }
}

/// Loads aggregates of type `A` from store `S` and executes commands on them.
///
/// The aggregate id is the stream id; the aggregate's [`Aggregate::NAME`] is stored as the
/// stream type and checked on every load.
#[derive(Debug)]
pub struct Repository<A, S> {
    store: S,
    max_retries: u32,
    /// Set by [`Repository::with_cache`]; shared by clones.
    cache: Option<Arc<StateCache<A>>>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            max_retries: self.max_retries,
            cache: self.cache.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository on `store`, retrying conflicting commands [`DEFAULT_MAX_RETRIES`] times.
    pub fn new(store: S) -> Self {
        Self {
            store,
            max_retries: DEFAULT_MAX_RETRIES,
            cache: None,
            aggregate: PhantomData,
        }
    }

    /// Sets how many times a command is decided again after a concurrency conflict.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Keeps the state and version of up to `capacity` recently used streams in memory (the
    /// least recently used one is dropped first), shared by this repository and its clones.
    ///
    /// What it buys: on a cached stream, [`execute`](Self::execute) decides without reading
    /// and appends expecting the cached version, one round trip per command instead of a read
    /// (from the latest snapshot on) and an append; [`load`](Self::load) reads only the events
    /// after the cached version. That is what a hot aggregate needs.
    ///
    /// What it costs: memory for up to `capacity` states and their stream ids, and a clone of
    /// the state in and out of the cache per command.
    ///
    /// It stays correct with other writers, in this process or any other: every append checks
    /// the stream's version, so a stale state meets a conflict, and the repository then reads
    /// only the newer events and decides again (this first conflict does not count against
    /// [`with_max_retries`](Self::with_max_retries)). A rejection, or a command with nothing to
    /// do, decided on a cached state stands only once the stream proves to hold nothing newer.
    /// So every command has the outcome it would have without the cache.
    pub fn with_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache = Some(Arc::new(StateCache::new(capacity, A::clone)));
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the current state: from the latest valid snapshot plus newer events (P10), or with
    /// a cache ([`with_cache`](Self::with_cache)) from the cached state plus newer events.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, LoadError> {
        self.load_until(id, Until::End).await
    }

    /// Loads the state as it was right after stream version `version` (P13).
    pub async fn load_at_version(&self, id: &str, version: u64) -> Result<Loaded<A>, LoadError> {
        self.load_until(id, Until::Version(version)).await
    }

    /// Loads the state with the events recorded at or before `time` (P13).
    pub async fn load_at_time(
        &self,
        id: &str,
        time: DateTime<Utc>,
    ) -> Result<Loaded<A>, LoadError> {
        self.load_until(id, Until::RecordedAt(time)).await
    }

    async fn load_until(&self, id: &str, until: Until) -> Result<Loaded<A>, LoadError> {
        check_id(id)?;
        let span = tracing::debug_span!(
            "es.load",
            aggregate = A::NAME,
            stream_id = id,
            cached_version = tracing::field::Empty,
            snapshot_version = tracing::field::Empty,
            events = tracing::field::Empty,
            version = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let cached = match until {
                Until::End => self.cached(id),
                Until::Version(_) | Until::RecordedAt(_) => None,
            };
            let start = match (cached, until) {
                (Some(cached), _) => {
                    tracing::Span::current().record("cached_version", cached.version);
                    Some(cached)
                }
                // A snapshot says nothing about when its events were recorded.
                (None, Until::RecordedAt(_)) => None,
                (None, Until::End) => self.valid_snapshot(id, u64::MAX).await,
                (None, Until::Version(version)) => self.valid_snapshot(id, version).await,
            };
            let folded = self.fold(id, start.unwrap_or_default(), until).await;
            if until == Until::End {
                match &folded {
                    Ok((loaded, _)) => self.remember(id, &loaded.state, loaded.version),
                    Err(_) => self.forget(id),
                }
            }
            let (loaded, events) = folded?;
            let span = tracing::Span::current();
            span.record("events", events);
            span.record("version", loaded.version);
            span.record("elapsed_us", started.elapsed().as_micros() as u64);
            Ok(loaded)
        }
        .instrument(span)
        .await
    }

    /// The current state, from `loaded` on: only the events after its version are read.
    async fn catch_up(&self, id: &str, loaded: Loaded<A>) -> Result<Loaded<A>, LoadError> {
        if loaded.version == 0 {
            // The empty state a creating command assumed: the stream may be long, and a load
            // starts from its snapshot.
            return self.load(id).await;
        }
        let span = tracing::debug_span!(
            "es.catch_up",
            stream_id = id,
            from_version = loaded.version,
            events = tracing::field::Empty,
        );
        async {
            let (loaded, events) = self.fold(id, loaded, Until::End).await?;
            tracing::Span::current().record("events", events);
            self.remember(id, &loaded.state, loaded.version);
            Ok(loaded)
        }
        .instrument(span)
        .await
    }

    /// Folds the events after `loaded.version` into it; returns how many were folded.
    async fn fold(
        &self,
        id: &str,
        mut loaded: Loaded<A>,
        until: Until,
    ) -> Result<(Loaded<A>, u64), LoadError> {
        let from_version = loaded.version + 1;
        let folded = self
            .store
            .replay_stream(id, from_version, until, |event: ReplayedEvent<'_>| {
                if event.stream_type != A::NAME {
                    return Err(LoadError::WrongStreamType {
                        stream_id: id.to_owned(),
                        expected: A::NAME,
                        actual: event.stream_type.to_owned(),
                        stream_version: event.stream_version,
                    });
                }
                if event.stream_version != loaded.version + 1 {
                    return Err(LoadError::VersionGap {
                        stream_id: id.to_owned(),
                        previous: loaded.version,
                        found: event.stream_version,
                    });
                }
                let decoded =
                    A::Event::decode(event.event_type, event.schema_version, event.payload)
                        .map_err(|source| LoadError::Decode {
                            stream_id: id.to_owned(),
                            stream_version: event.stream_version,
                            event_type: event.event_type.to_owned(),
                            source,
                        })?;
                loaded.state.apply_event(&decoded);
                loaded.version = event.stream_version;
                Ok(())
            })
            .await?;
        Ok((loaded, folded))
    }

    /// The stream's snapshot if it is usable: same aggregate type and state version, at or
    /// below `max_version`, and decodable. Anything else is ignored: events rebuild the state.
    async fn valid_snapshot(&self, id: &str, max_version: u64) -> Option<Loaded<A>> {
        A::SNAPSHOT_EVERY?;
        let snapshot = match self.store.load_snapshot(id).await {
            Ok(snapshot) => snapshot?,
            Err(error) => {
                tracing::warn!(stream_id = id, %error, "snapshot unavailable, replaying all events");
                return None;
            }
        };
        if snapshot.stream_type != A::NAME
            || snapshot.state_version != A::STATE_VERSION
            || snapshot.stream_version > max_version
        {
            tracing::debug!(
                stream_id = id,
                state_version = snapshot.state_version,
                "snapshot not applicable, replaying all events"
            );
            return None;
        }
        match A::decode_state(snapshot.state.as_str())? {
            Ok(state) => {
                tracing::Span::current().record("snapshot_version", snapshot.stream_version);
                Some(Loaded {
                    state,
                    version: snapshot.stream_version,
                })
            }
            Err(error) => {
                tracing::warn!(stream_id = id, %error, "undecodable snapshot ignored, replaying all events");
                None
            }
        }
    }

    /// Loads the aggregate, decides `command`, appends the events expecting the loaded version,
    /// and on a concurrency conflict reads the newer events and decides again, up to the retry
    /// limit (P7). Safe because deciding is pure.
    ///
    /// With a cache ([`with_cache`](Self::with_cache)), a cached state is decided on without
    /// reading the stream first.
    pub async fn execute<C>(
        &self,
        id: &str,
        command: &C,
        context: &CommandContext,
    ) -> Result<Executed<A>, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        self.run(id, command, context, false).await
    }

    /// Executes a command that starts a new aggregate, without reading the stream first: it
    /// decides on the empty state (or on the cached state, with a cache) and appends expecting
    /// that state's version, one round trip. If the stream holds more after all (a conflict), or
    /// the command is rejected or does nothing on the assumed state, it continues as
    /// [`execute`](Self::execute) does, on the stream's real state, so the outcome is always the
    /// one `execute` would give.
    pub async fn create<C>(
        &self,
        id: &str,
        command: &C,
        context: &CommandContext,
    ) -> Result<Executed<A>, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        self.run(id, command, context, true).await
    }

    async fn run<C>(
        &self,
        id: &str,
        command: &C,
        context: &CommandContext,
        create: bool,
    ) -> Result<Executed<A>, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        let span = tracing::debug_span!(
            "es.execute",
            aggregate = A::NAME,
            stream_id = id,
            command = std::any::type_name::<C>(),
            events = tracing::field::Empty,
            conflicts = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let result = self.decide_and_append(id, command, context, create).await;
            match &result {
                Ok(executed) => {
                    let span = tracing::Span::current();
                    span.record("events", executed.events.len());
                    span.record("conflicts", executed.conflicts);
                    span.record("elapsed_us", started.elapsed().as_micros() as u64);
                }
                Err(ExecuteError::Rejected(_)) => {}
                // Whatever failed, the next command starts from the store, not from this state.
                Err(_) => self.forget(id),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn decide_and_append<C>(
        &self,
        id: &str,
        command: &C,
        context: &CommandContext,
        create: bool,
    ) -> Result<Executed<A>, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        check_id(id)?;
        let metadata =
            RawJson::encode(&context.metadata()).map_err(|source| ExecuteError::Encode {
                stream_id: id.to_owned(),
                event_type: "metadata",
                source,
            })?;
        // An assumed state (the cached one, or the empty one for a creating command) saves the
        // read: the append's version check proves it current. When it was not, the newer events
        // are read and the command is decided again, as after any conflict.
        let (mut loaded, mut assumed) = match self.cached(id) {
            Some(cached) => (cached, true),
            None if create => (Loaded::default(), true),
            None => (self.load(id).await?, false),
        };
        let mut conflicts = 0;
        loop {
            let decided = tracing::debug_span!("es.decide", events = tracing::field::Empty)
                .in_scope(|| {
                    let decided = loaded.state.handle(command);
                    if let Ok(events) = &decided {
                        tracing::Span::current().record("events", events.len());
                    }
                    decided
                });
            let appends = matches!(&decided, Ok(events) if !events.is_empty());
            if assumed && !appends {
                // A rejection, or nothing to do, stands only on the stream's current state; no
                // append will check that, so read what is newer.
                assumed = false;
                let version = loaded.version;
                loaded = self.catch_up(id, loaded).await?;
                if loaded.version != version {
                    continue;
                }
            }
            let events = decided.map_err(ExecuteError::Rejected)?;
            match self.write(id, loaded.version, &events, &metadata).await {
                Ok(written) => {
                    return Ok(self.finish(id, loaded, events, written, conflicts).await);
                }
                Err(ExecuteError::Store(StoreError::Conflict { .. })) => {
                    if std::mem::replace(&mut assumed, false) {
                        // The assumed state was behind the stream: not a race, no retry spent.
                        tracing::debug!(
                            stream_id = id,
                            version = loaded.version,
                            "assumed state is stale, catching up"
                        );
                    } else if conflicts < self.max_retries {
                        conflicts += 1;
                        tracing::debug!(
                            stream_id = id,
                            conflicts,
                            "concurrency conflict, deciding again"
                        );
                    } else {
                        return Err(ExecuteError::TooManyConflicts {
                            stream_id: id.to_owned(),
                            attempts: conflicts + 1,
                        });
                    }
                    loaded = self.catch_up(id, loaded).await?;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Appends `events` expecting the stream at `version`; `None` when there are none.
    async fn write<E>(
        &self,
        id: &str,
        version: u64,
        events: &[A::Event],
        metadata: &RawJson,
    ) -> Result<Option<Written>, ExecuteError<E>> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut batch = Vec::with_capacity(events.len());
        for event in events {
            let payload = event.encode().map_err(|source| ExecuteError::Encode {
                stream_id: id.to_owned(),
                event_type: event.event_type(),
                source,
            })?;
            batch.push(NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload,
                metadata: metadata.clone(),
            });
        }
        let event_ids = batch.iter().map(|event| event.event_id).collect();
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let span = tracing::debug_span!(
            "es.append",
            stream_id = id,
            events = batch.len(),
            expected = %expected,
            elapsed_us = tracing::field::Empty
        );
        let started = Instant::now();
        let outcome = self
            .store
            .append(A::NAME, id, expected, batch)
            .instrument(span.clone())
            .await
            .map_err(ExecuteError::Store)?;
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(Some(Written {
            event_ids,
            range: outcome.range(),
        }))
    }

    /// What a command did once its events are stored: the new state, which is cached, and a
    /// snapshot when the version crossed a multiple of [`Aggregate::SNAPSHOT_EVERY`].
    async fn finish(
        &self,
        id: &str,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        written: Option<Written>,
        conflicts: u32,
    ) -> Executed<A> {
        let Loaded { mut state, version } = loaded;
        let Some(Written { event_ids, range }) = written else {
            self.remember(id, &state, version);
            return Executed {
                events,
                event_ids: Vec::new(),
                first_version: version + 1,
                version,
                last_position: None,
                state,
                conflicts,
            };
        };
        for event in &events {
            state.apply_event(event);
        }
        if let Some(every) = A::SNAPSHOT_EVERY
            && every > 0
            && version / every != range.last_version / every
        {
            self.save_snapshot(id, &state, range.last_version).await;
        }
        self.remember(id, &state, range.last_version);
        Executed {
            events,
            event_ids,
            first_version: range.first_version,
            version: range.last_version,
            last_position: Some(range.last_position),
            state,
            conflicts,
        }
    }

    /// Saves a snapshot off the command's path: in a task of its own when a tokio runtime runs
    /// (the command does not wait for it), else before returning. A failure only costs a longer
    /// replay later, so it is logged, not raised; and of two racing saves the store keeps the
    /// newer snapshot, whichever lands last.
    async fn save_snapshot(&self, id: &str, state: &A, version: u64) {
        let span = tracing::debug_span!("es.snapshot", stream_id = id, version);
        let state = match state.encode_state() {
            None => return,
            Some(Ok(state)) => state,
            Some(Err(error)) => {
                span.in_scope(|| tracing::warn!(%error, "snapshot not saved"));
                return;
            }
        };
        let snapshot = Snapshot {
            stream_type: A::NAME.to_owned(),
            stream_id: id.to_owned(),
            stream_version: version,
            state_version: A::STATE_VERSION,
            state,
            taken_at: Utc::now(),
        };
        let store = self.store.clone();
        let save = async move {
            match store.save_snapshot(&snapshot).await {
                Ok(()) => tracing::debug!("snapshot saved"),
                Err(error) => tracing::warn!(%error, "snapshot not saved"),
            }
        }
        .instrument(span);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(save)),
            Err(_) => save.await,
        }
    }

    fn cached(&self, id: &str) -> Option<Loaded<A>> {
        self.cache.as_ref()?.get(id)
    }

    fn remember(&self, id: &str, state: &A, version: u64) {
        if let Some(cache) = &self.cache {
            cache.put(id, state, version);
        }
    }

    fn forget(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.remove(id);
        }
    }
}

/// The ids and versions of the events a command appended.
struct Written {
    event_ids: Vec<Uuid>,
    range: AppendedRange,
}

fn check_id(id: &str) -> Result<(), LoadError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(LoadError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

impl<A: Default> Default for Loaded<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
        }
    }
}
