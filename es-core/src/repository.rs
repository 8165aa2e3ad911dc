//! [`Repository`]: loads aggregates from a store and executes commands on them.

mod cache;
mod gate;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Handle};
use crate::backoff::Backoff;
use crate::contract;
use crate::envelope::{CommandContext, NewEvent, Position, RecordedEvent};
use crate::event::{DecodeError, Event};
use crate::json::{EncodeError, RawJson};
use crate::store::{
    AppendOutcome, AppendedRange, EventStore, ExpectedVersion, ReplayedEvent, Snapshot, StoreError,
    Until,
};
use crate::stream::{LogScope, StreamKey, StreamKeyBuf, Tenant};

use self::cache::StateCache;
use self::gate::Gates;

/// How many times [`Repository::execute`] decides again after a concurrency conflict, unless
/// set with [`Repository::with_max_retries`].
///
/// Conflicts come only from other processes (commands of one process on one stream queue).
/// While another process keeps writing the stream, each attempt loses with about the same
/// chance, however long the wait before it. Two processes × 4 tasks × 100 commands on one
/// PostgreSQL stream, without caches, had commands retried up to 17 times, and a limit of 10
/// failed a command in one run out of two. 30 bounds a command that keeps losing to about 2 s
/// of waits ([`DEFAULT_RETRY_BACKOFF`]) before [`ExecuteError::TooManyConflicts`]. A stream
/// that several processes write without pause for long (the faster loop, a cached one above all,
/// keeps winning) is better served by routing its commands to one process, where they queue.
pub const DEFAULT_MAX_RETRIES: u32 = 30;

/// The waits between conflict retries unless set with [`Repository::with_retry_backoff`]:
/// from 2 ms, doubling, up to 100 ms, with jitter.
pub const DEFAULT_RETRY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(2), Duration::from_millis(100));

/// An aggregate's state and the stream version it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it.
    pub version: u64,
    /// Where the load started before it replayed the newer events.
    pub started_from: StartedFrom,
}

/// Where a load started: what it did not have to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartedFrom {
    /// The empty state: every event was replayed.
    #[default]
    Empty,
    /// A snapshot taken at this stream version.
    Snapshot(u64),
    /// The repository's cache, at this stream version ([`Repository::with_cache`]).
    Cache(u64),
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
    /// The global position of the last new event (`None` if none): what a reader of a
    /// projection waits for to see the command's effect.
    pub last_position: Option<Position>,
    /// The state after the command.
    pub state: A,
    /// How many concurrency conflicts were met (and retried) before it went through, not
    /// counting one met by a cached or assumed state that was behind the stream.
    pub conflicts: u32,
    /// `true` when this idempotent command had been executed before (a retry after a lost
    /// reply): nothing was written now, and the other fields describe the first execution.
    pub repeated: bool,
}

/// An API's view of what a command did: its events (id, type, schema version and payload as
/// stored), the versions, the last position, the conflicts met and whether it was a repeat. The
/// state is left out: serialize it yourself if an API should show it.
impl<A: Aggregate> serde::Serialize for Executed<A> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::{Error as _, SerializeStruct};

        #[derive(serde::Serialize)]
        struct Written<'a> {
            event_id: Uuid,
            event_type: &'a str,
            schema_version: u32,
            payload: RawJson,
        }
        let events = self
            .events
            .iter()
            .zip(&self.event_ids)
            .map(|(event, &event_id)| {
                Ok(Written {
                    event_id,
                    event_type: event.event_type(),
                    schema_version: event.schema_version(),
                    payload: event.encode().map_err(Ser::Error::custom)?,
                })
            })
            .collect::<Result<Vec<_>, Ser::Error>>()?;
        let mut outcome = serializer.serialize_struct("Executed", 6)?;
        outcome.serialize_field("events", &events)?;
        outcome.serialize_field("first_version", &self.first_version)?;
        outcome.serialize_field("version", &self.version)?;
        outcome.serialize_field("last_position", &self.last_position)?;
        outcome.serialize_field("conflicts", &self.conflicts)?;
        outcome.serialize_field("repeated", &self.repeated)?;
        outcome.end()
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The stream has no events (up to the requested version or time).
    #[error("stream `{stream}` does not exist")]
    NotFound {
        /// The stream.
        stream: StreamKeyBuf,
    },
    /// The store failed, or refused the id (see [`crate::contract`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be decoded.
    #[error(
        "failed to decode event `{event_type}` at version {stream_version} of stream `{stream}`: {source}"
    )]
    Decode {
        /// The stream.
        stream: StreamKeyBuf,
        /// The event's stream version.
        stream_version: u64,
        /// The stored event type.
        event_type: String,
        /// Why decoding failed.
        source: DecodeError,
    },
    /// The store returned versions out of sequence.
    #[error("stream `{stream}` jumps from version {previous} to {found}")]
    VersionGap {
        /// The stream.
        stream: StreamKeyBuf,
        /// The last version folded.
        previous: u64,
        /// The version read next.
        found: u64,
    },
}

impl LoadError {
    /// Whether retrying later may succeed (the store was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, LoadError::Store(error) if error.is_transient())
    }
}

/// Why a command was not executed. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The aggregate rejected the command (a domain error).
    #[error("command rejected: {0}")]
    Rejected(E),
    /// The stream does not exist and the command does not start streams (its `Handle`
    /// implementation does not set `CREATES`).
    #[error("stream `{stream}` does not exist, and command `{command}` does not start streams")]
    NotFound {
        /// The stream.
        stream: StreamKeyBuf,
        /// The command's type.
        command: &'static str,
    },
    /// The command expected another stream version
    /// ([`CommandContext::expecting_version`]): the caller decided on a state that is no
    /// longer current. Not retried.
    #[error(
        "stream `{stream}` is at version {}, not at version {expected} the command expected",
        .actual.unwrap_or(0)
    )]
    Conflict {
        /// The stream.
        stream: StreamKeyBuf,
        /// The version the command expected.
        expected: u64,
        /// The stream's version (`None`: no stream).
        actual: Option<u64>,
    },
    /// The aggregate could not be loaded.
    #[error(transparent)]
    Load(LoadError),
    /// An event produced by the command could not be serialized.
    #[error("failed to encode event `{event_type}` for stream `{stream}`: {source}")]
    Encode {
        /// The stream.
        stream: StreamKeyBuf,
        /// The event type (`metadata` for the command's metadata).
        event_type: &'static str,
        /// What went wrong: a NaN or infinite number, or what serde reported.
        source: EncodeError,
    },
    /// Every attempt met a concurrent write from another process.
    #[error("gave up on stream `{stream}` after {attempts} attempts, each met a concurrent write")]
    TooManyConflicts {
        /// The stream.
        stream: StreamKeyBuf,
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

    /// Whether retrying later may succeed unchanged: the store was unavailable, or other
    /// processes kept winning the stream.
    pub fn is_transient(&self) -> bool {
        match self {
            ExecuteError::Load(error) => error.is_transient(),
            ExecuteError::Store(error) => error.is_transient(),
            ExecuteError::TooManyConflicts { .. } => true,
            _ => false,
        }
    }
}

impl<E> From<LoadError> for ExecuteError<E> {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Store(error) => ExecuteError::Store(error),
            other => ExecuteError::Load(other),
        }
    }
}

/// Loads aggregates of type `A` from store `S` and executes commands on them.
///
/// An aggregate id names the stream `(tenant, A::NAME, id)`: the repository's tenant (the
/// [default one](crate::DEFAULT_TENANT) unless scoped with [`for_tenant`](Self::for_tenant)),
/// the aggregate's type, and the id. Clones share the cache, the per-stream queue of commands
/// and the pending snapshots.
///
/// **Commands on one stream queue.** Commands of this repository and its clones on one stream
/// run one at a time, so within a process a hot aggregate never meets a conflict; writers in
/// other processes are caught by the store's version check, and the command is decided again
/// after a jittered backoff ([`with_retry_backoff`](Self::with_retry_backoff)), up to
/// [`with_max_retries`](Self::with_max_retries) times.
///
/// **Snapshots.** When the stream version crosses a multiple of the snapshot interval (the
/// aggregate's `snapshot_every`, or [`with_snapshot_interval`](Self::with_snapshot_interval)),
/// the state is saved in a task of its own, off the command's path. A program that exits right
/// after its last command awaits [`flush_snapshots`](Self::flush_snapshots) first, or those
/// snapshots are lost (which only costs a longer replay later).
#[derive(Debug)]
pub struct Repository<A, S> {
    store: S,
    tenant: Tenant,
    max_retries: u32,
    retry_backoff: Backoff,
    snapshot_interval: Option<u64>,
    /// Set by [`Repository::with_cache`]; shared by clones.
    cache: Option<Arc<StateCache<A>>>,
    gates: Arc<Gates>,
    snapshots: Arc<PendingSnapshots>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tenant: self.tenant.clone(),
            max_retries: self.max_retries,
            retry_backoff: self.retry_backoff,
            snapshot_interval: self.snapshot_interval,
            cache: self.cache.clone(),
            gates: self.gates.clone(),
            snapshots: self.snapshots.clone(),
            aggregate: PhantomData,
        }
    }
}

/// The repositories of every tenant of a multi-tenant service: the only way to a
/// [`Repository`] is [`tenant`](Self::tenant), so a request handler cannot forget to scope its
/// commands.
///
/// ```
/// # use es_core::{Aggregate, Apply, Event, MemoryStore, Repository, Tenant};
/// # #[derive(Event)] pub enum OrderEvent { Placed }
/// # #[derive(Default, Clone, Aggregate)] #[aggregate(name = "order", event = OrderEvent)] pub struct Order;
/// # impl Apply<order_event::Placed> for Order { fn apply(&mut self, _: &order_event::Placed) {} }
/// // Built once, kept in the service's state:
/// let orders = Repository::<Order, _>::new(MemoryStore::new()).with_cache(1_000).per_tenant();
///
/// // In a request handler, with the tenant of the authenticated caller:
/// let acme = Tenant::new("acme")?;
/// let repository = orders.tenant(&acme);
/// assert_eq!(repository.tenant(), &acme);
/// # Ok::<(), es_core::InvalidTenant>(())
/// ```
#[derive(Debug)]
pub struct TenantRepositories<A, S> {
    repository: Repository<A, S>,
}

impl<A, S: Clone> Clone for TenantRepositories<A, S> {
    fn clone(&self) -> Self {
        Self {
            repository: self.repository.clone(),
        }
    }
}

impl<A: Aggregate, S: EventStore> TenantRepositories<A, S> {
    /// The repository of `tenant`: cheap (a clone sharing the cache, queues and snapshots).
    pub fn tenant(&self, tenant: &Tenant) -> Repository<A, S> {
        self.repository.for_tenant(tenant)
    }

    /// Waits until every snapshot started so far, of any tenant, is saved: see
    /// [`Repository::flush_snapshots`].
    pub async fn flush_snapshots(&self) {
        self.repository.flush_snapshots().await;
    }
}

/// Snapshot saves running in the background, awaited by [`Repository::flush_snapshots`].
#[derive(Debug, Default)]
struct PendingSnapshots {
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository on `store`, in the default tenant.
    pub fn new(store: S) -> Self {
        Self {
            store,
            tenant: Tenant::default(),
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            snapshot_interval: A::SNAPSHOT_EVERY.filter(|&every| every > 0),
            cache: None,
            gates: Arc::default(),
            snapshots: Arc::default(),
            aggregate: PhantomData,
        }
    }

    /// The same repository (sharing cache, queues and snapshots) scoped to `tenant`.
    pub fn for_tenant(&self, tenant: &Tenant) -> Self {
        Self {
            tenant: tenant.clone(),
            ..self.clone()
        }
    }

    /// Turns this repository into the repositories of every tenant, reachable only through
    /// [`TenantRepositories::tenant`]: what a multi-tenant service keeps in its state.
    pub fn per_tenant(self) -> TenantRepositories<A, S> {
        TenantRepositories { repository: self }
    }

    /// The tenant of the streams this repository works on.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// Sets how many times a command is decided again after a concurrency conflict with
    /// another process.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets the waits between conflict retries ([`DEFAULT_RETRY_BACKOFF`] unless set).
    pub fn with_retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Takes a snapshot whenever the stream version crosses a multiple of `every` (`None`: never),
    /// instead of the aggregate's `snapshot_every`. Only aggregates that can serialize their
    /// state (`snapshot_every` set in their derive, or `encode_state` implemented) take any.
    pub fn with_snapshot_interval(mut self, every: Option<u64>) -> Self {
        self.snapshot_interval = every.filter(|&every| every > 0);
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

    /// The key of stream `id` in this repository's tenant.
    pub fn stream<'a>(&'a self, id: &'a str) -> StreamKey<'a> {
        StreamKey::new(A::NAME, id).in_tenant(self.tenant.as_str())
    }

    /// Waits until every snapshot started so far is saved (or failed, which is logged). Call it
    /// before a short-lived program (a CLI, a function handler) exits, or its last snapshots may
    /// be lost: only speed is lost then, never data.
    pub async fn flush_snapshots(&self) {
        let mut pending = std::mem::take(&mut *self.snapshots.lock());
        while pending.join_next().await.is_some() {}
    }

    /// Loads the current state: from the latest valid snapshot plus newer events, or with a
    /// cache ([`with_cache`](Self::with_cache)) from the cached state plus newer events.
    /// [`LoadError::NotFound`] when the stream has no events.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, LoadError> {
        self.load_existing(id, Until::End).await
    }

    /// Loads the state as it was right after stream version `version` (time travel).
    pub async fn load_at_version(&self, id: &str, version: u64) -> Result<Loaded<A>, LoadError> {
        self.load_existing(id, Until::Version(version)).await
    }

    /// Loads the state with the events recorded at or before `time` (time travel).
    pub async fn load_at_time(
        &self,
        id: &str,
        time: DateTime<Utc>,
    ) -> Result<Loaded<A>, LoadError> {
        self.load_existing(id, Until::RecordedAt(time)).await
    }

    async fn load_existing(&self, id: &str, until: Until) -> Result<Loaded<A>, LoadError> {
        let stream = self.stream(id);
        let loaded = self.load_until(stream, until).await?;
        if loaded.version == 0 {
            return Err(LoadError::NotFound {
                stream: stream.to_owned(),
            });
        }
        Ok(loaded)
    }

    async fn load_until(
        &self,
        stream: StreamKey<'_>,
        until: Until,
    ) -> Result<Loaded<A>, LoadError> {
        contract::check_stream(stream)?;
        let span = tracing::debug_span!(
            "es.load",
            aggregate = A::NAME,
            tenant = stream.tenant,
            stream_id = stream.id,
            cached_version = tracing::field::Empty,
            snapshot_version = tracing::field::Empty,
            events = tracing::field::Empty,
            version = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let cached = match until {
                Until::End => self.cached(stream),
                Until::Version(_) | Until::RecordedAt(_) => None,
            };
            let start = match (cached, until) {
                (Some(cached), _) => {
                    tracing::Span::current().record("cached_version", cached.version);
                    Some(cached)
                }
                // A snapshot says nothing about when its events were recorded.
                (None, Until::RecordedAt(_)) => None,
                (None, Until::End) => self.valid_snapshot(stream, u64::MAX).await,
                (None, Until::Version(version)) => self.valid_snapshot(stream, version).await,
            };
            let folded = self.fold(stream, start.unwrap_or_default(), until).await;
            if until == Until::End {
                match &folded {
                    Ok((loaded, _)) => self.remember(stream, &loaded.state, loaded.version),
                    Err(_) => self.forget(stream),
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
    async fn catch_up(
        &self,
        stream: StreamKey<'_>,
        loaded: Loaded<A>,
    ) -> Result<Loaded<A>, LoadError> {
        if loaded.version == 0 {
            // The empty state a creating command assumed: the stream may be long, and a load
            // starts from its snapshot.
            return self.load_until(stream, Until::End).await;
        }
        let span = tracing::debug_span!(
            "es.catch_up",
            stream_id = stream.id,
            from_version = loaded.version,
            events = tracing::field::Empty,
        );
        async {
            let (loaded, events) = self.fold(stream, loaded, Until::End).await?;
            tracing::Span::current().record("events", events);
            self.remember(stream, &loaded.state, loaded.version);
            Ok(loaded)
        }
        .instrument(span)
        .await
    }

    /// Folds the events after `loaded.version` into it; returns how many were folded.
    // The visitor's error is large, but only ever built once, when a load fails.
    #[allow(clippy::result_large_err)]
    async fn fold(
        &self,
        stream: StreamKey<'_>,
        mut loaded: Loaded<A>,
        until: Until,
    ) -> Result<(Loaded<A>, u64), LoadError> {
        let from_version = loaded.version + 1;
        let folded = self
            .store
            .replay_stream(stream, from_version, until, |event: ReplayedEvent<'_>| {
                if event.stream_version != loaded.version + 1 {
                    return Err(LoadError::VersionGap {
                        stream: stream.to_owned(),
                        previous: loaded.version,
                        found: event.stream_version,
                    });
                }
                let decoded =
                    A::Event::decode(event.event_type, event.schema_version, event.payload)
                        .map_err(|source| LoadError::Decode {
                            stream: stream.to_owned(),
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

    /// The stream's snapshot if it is usable: same state version, at or below `max_version`,
    /// and decodable. Anything else is ignored: events rebuild the state.
    async fn valid_snapshot(&self, stream: StreamKey<'_>, max_version: u64) -> Option<Loaded<A>> {
        self.snapshot_interval?;
        let snapshot = match self.store.load_snapshot(stream).await {
            Ok(snapshot) => snapshot?,
            Err(error) => {
                tracing::warn!(%stream, %error, "snapshot unavailable, replaying all events");
                return None;
            }
        };
        if snapshot.state_version != A::STATE_VERSION || snapshot.stream_version > max_version {
            tracing::debug!(
                %stream,
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
                    started_from: StartedFrom::Snapshot(snapshot.stream_version),
                })
            }
            Err(error) => {
                tracing::warn!(%stream, %error, "undecodable snapshot ignored, replaying all events");
                None
            }
        }
    }

    /// Loads the aggregate, decides `command`, appends the events expecting the loaded version,
    /// and on a concurrency conflict reads the newer events and decides again, up to the retry
    /// limit; deciding is pure, so that is safe.
    ///
    /// - A stream that does not exist is [`ExecuteError::NotFound`], unless the command may
    ///   start streams (`const CREATES: bool = true` in its [`Handle`] implementation).
    /// - With [`CommandContext::expecting_version`], the command is decided only on that
    ///   version; any other is [`ExecuteError::Conflict`], without retries.
    /// - With [`CommandContext::with_command_id`], the command is idempotent: executed again, it
    ///   writes nothing and returns the first execution's outcome ([`Executed::repeated`]).
    /// - With a cache ([`with_cache`](Self::with_cache)), a cached state is decided on without
    ///   reading the stream first.
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

    /// Executes a command that starts a new aggregate without reading the stream first: it
    /// decides on the empty state (or on the cached state, with a cache) and appends expecting
    /// that state's version, one round trip. If the stream holds more after all (a conflict), or
    /// the command is rejected or does nothing on the assumed state, it continues as
    /// [`execute`](Self::execute) does, on the stream's real state, so the outcome is always the
    /// one `execute` would give.
    ///
    /// The command must be one that starts streams: `const CREATES: bool = true` in its
    /// [`Handle`] implementation (checked at compile time).
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
        const {
            assert!(
                <A as Handle<C>>::CREATES,
                "`Repository::create` needs a command that starts streams: set `const CREATES: bool = true;` in its `Handle` implementation, or call `execute`"
            );
        }
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
        let stream = self.stream(id);
        let span = tracing::debug_span!(
            "es.execute",
            aggregate = A::NAME,
            tenant = stream.tenant,
            stream_id = id,
            command = std::any::type_name::<C>(),
            events = tracing::field::Empty,
            conflicts = tracing::field::Empty,
            repeated = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            contract::check_stream(stream).map_err(ExecuteError::Store)?;
            let _queued = self.gates.enter(gate_key(stream)).await;
            let result = self
                .decide_and_append(stream, command, context, create)
                .await;
            match &result {
                Ok(executed) => {
                    let span = tracing::Span::current();
                    span.record("events", executed.events.len());
                    span.record("conflicts", executed.conflicts);
                    span.record("repeated", executed.repeated);
                    span.record("elapsed_us", started.elapsed().as_micros() as u64);
                }
                Err(ExecuteError::Rejected(_)) => {}
                // Whatever failed, the next command starts from the store, not from this state.
                Err(_) => self.forget(stream),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn decide_and_append<C>(
        &self,
        stream: StreamKey<'_>,
        command: &C,
        context: &CommandContext,
        create: bool,
    ) -> Result<Executed<A>, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        let metadata =
            RawJson::try_encode(&context.metadata()).map_err(|source| ExecuteError::Encode {
                stream: stream.to_owned(),
                event_type: "metadata",
                source,
            })?;
        let ids = EventIds::new::<C>(stream, context);
        let expected = context.expected_version();
        // An assumed state (the cached one, or the empty one for a creating command) saves the
        // read: the append's version check proves it current. When it was not, the newer events
        // are read and the command is decided again, as after any conflict.
        let (mut loaded, mut assumed) = match self.cached(stream) {
            Some(cached) => (cached, true),
            None if create && expected.is_none_or(|version| version == 0) => {
                (Loaded::default(), true)
            }
            None => (self.load_until(stream, Until::End).await?, false),
        };
        let mut conflicts = 0;
        loop {
            if let Some(expected) = expected
                && loaded.version != expected
            {
                if std::mem::replace(&mut assumed, false) {
                    loaded = self.catch_up(stream, loaded).await?;
                    continue;
                }
                if let Some(earlier) = self.earlier_execution(stream, &ids).await? {
                    return Ok(earlier);
                }
                return Err(ExecuteError::Conflict {
                    stream: stream.to_owned(),
                    expected,
                    actual: (loaded.version > 0).then_some(loaded.version),
                });
            }
            if loaded.version == 0 && !(create || <A as Handle<C>>::CREATES) {
                if std::mem::replace(&mut assumed, false) {
                    loaded = self.catch_up(stream, loaded).await?;
                    continue;
                }
                if let Some(earlier) = self.earlier_execution(stream, &ids).await? {
                    return Ok(earlier);
                }
                return Err(ExecuteError::NotFound {
                    stream: stream.to_owned(),
                    command: std::any::type_name::<C>(),
                });
            }
            let decided = tracing::debug_span!("es.decide", events = tracing::field::Empty)
                .in_scope(|| {
                    let decided = loaded.state.handle(command);
                    if let Ok(events) = &decided {
                        tracing::Span::current().record("events", events.len());
                    }
                    decided
                });
            let appends = matches!(&decided, Ok(events) if !events.is_empty());
            if !appends {
                if std::mem::replace(&mut assumed, false) {
                    // A rejection, or nothing to do, stands only on the stream's current state;
                    // no append will check that, so read what is newer.
                    let version = loaded.version;
                    loaded = self.catch_up(stream, loaded).await?;
                    if loaded.version != version {
                        continue;
                    }
                }
                // Decided on the current state: unless an earlier execution of this very
                // command wrote what made it a rejection or a no-op.
                if let Some(earlier) = self.earlier_execution(stream, &ids).await? {
                    return Ok(earlier);
                }
            }
            let events = decided.map_err(ExecuteError::Rejected)?;
            match self
                .write(stream, &ids, loaded.version, &events, &metadata)
                .await
            {
                Ok(Some((AppendOutcome::Appended(range), event_ids))) => {
                    return Ok(self.finish(stream, loaded, events, event_ids, range, conflicts));
                }
                Ok(None) => return Ok(self.finish_empty(stream, loaded, events, conflicts)),
                // The very same batch was appended before: an idempotent command executed again
                // on the state it was first decided on.
                Ok(Some((AppendOutcome::AlreadyAppended(_), _))) => {
                    if let Some(earlier) = self.earlier_execution(stream, &ids).await? {
                        return Ok(earlier);
                    }
                    return Err(ExecuteError::Store(StoreError::backend(
                        format!("append to stream `{stream}`"),
                        "the store reported the batch as appended before, but it cannot be found",
                    )));
                }
                Err(ExecuteError::Store(StoreError::DuplicateEventId { .. })) if ids.derived => {
                    // This command's first event id is taken: by its earlier execution.
                    if let Some(earlier) = self.earlier_execution(stream, &ids).await? {
                        return Ok(earlier);
                    }
                    return Err(ExecuteError::Store(StoreError::backend(
                        format!("append to stream `{stream}`"),
                        "an event id derived from the command id is used by another stream",
                    )));
                }
                Err(ExecuteError::Store(StoreError::Conflict { actual, .. })) => {
                    if std::mem::replace(&mut assumed, false) {
                        // The assumed state was behind the stream: not a race, no retry spent.
                        tracing::debug!(
                            %stream,
                            version = loaded.version,
                            "assumed state is stale, catching up"
                        );
                    } else if let Some(expected) = expected {
                        if let Some(earlier) = self.earlier_execution(stream, &ids).await? {
                            return Ok(earlier);
                        }
                        return Err(ExecuteError::Conflict {
                            stream: stream.to_owned(),
                            expected,
                            actual,
                        });
                    } else if conflicts < self.max_retries {
                        conflicts += 1;
                        let pause = self.retry_backoff.delay(conflicts);
                        tracing::debug!(
                            %stream,
                            conflicts,
                            pause_us = pause.as_micros() as u64,
                            "concurrency conflict with another process, deciding again"
                        );
                        tokio::time::sleep(pause).await;
                    } else {
                        return Err(ExecuteError::TooManyConflicts {
                            stream: stream.to_owned(),
                            attempts: conflicts + 1,
                        });
                    }
                    loaded = self.catch_up(stream, loaded).await?;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Appends `events` expecting the stream at `version`; the outcome and the events' ids, or
    /// `None` when there are none.
    async fn write<E>(
        &self,
        stream: StreamKey<'_>,
        ids: &EventIds,
        version: u64,
        events: &[A::Event],
        metadata: &RawJson,
    ) -> Result<Option<(AppendOutcome, Vec<Uuid>)>, ExecuteError<E>> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut batch = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let payload = event.encode().map_err(|source| ExecuteError::Encode {
                stream: stream.to_owned(),
                event_type: event.event_type(),
                source,
            })?;
            batch.push(NewEvent {
                event_id: ids.id(index),
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
            %stream,
            events = batch.len(),
            expected = %expected,
            elapsed_us = tracing::field::Empty
        );
        let started = Instant::now();
        let outcome = self
            .store
            .append(stream, expected, batch)
            .instrument(span.clone())
            .await
            .map_err(ExecuteError::Store)?;
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(Some((outcome, event_ids)))
    }

    /// The outcome of the earlier execution of this idempotent command on this stream, if it
    /// wrote events: found by its first derived event id, read back from the stream.
    async fn earlier_execution<E>(
        &self,
        stream: StreamKey<'_>,
        ids: &EventIds,
    ) -> Result<Option<Executed<A>>, ExecuteError<E>> {
        if !ids.derived {
            return Ok(None);
        }
        let first = ids.id(0);
        let Some(found) = self
            .store
            .find_event(LogScope::Tenant(stream.tenant), first)
            .await
            .map_err(ExecuteError::Store)?
        else {
            return Ok(None);
        };
        if found.stream() != stream {
            return Ok(None);
        }
        let mut events = Vec::new();
        let mut event_ids = Vec::new();
        let mut last: Option<RecordedEvent> = None;
        let mut recorded = self
            .store
            .read_stream(stream, found.stream_version, Until::End);
        while let Some(event) = recorded.try_next().await.map_err(ExecuteError::Store)? {
            if event.event_id != ids.id(event_ids.len()) {
                break;
            }
            let decoded = event.decode::<A::Event>().map_err(|source| {
                ExecuteError::Load(LoadError::Decode {
                    stream: stream.to_owned(),
                    stream_version: event.stream_version,
                    event_type: event.event_type.clone(),
                    source,
                })
            })?;
            events.push(decoded);
            event_ids.push(event.event_id);
            last = Some(event);
        }
        drop(recorded);
        let Some(last) = last else { return Ok(None) };
        let state = self
            .load_until(stream, Until::Version(last.stream_version))
            .await?
            .state;
        tracing::debug!(%stream, version = last.stream_version, "idempotent command executed before; returning its outcome");
        Ok(Some(Executed {
            events,
            event_ids,
            first_version: found.stream_version,
            version: last.stream_version,
            last_position: Some(last.position),
            state,
            conflicts: 0,
            repeated: true,
        }))
    }

    /// What a command that decided no events did.
    fn finish_empty(
        &self,
        stream: StreamKey<'_>,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        conflicts: u32,
    ) -> Executed<A> {
        let Loaded { state, version, .. } = loaded;
        self.remember(stream, &state, version);
        Executed {
            events,
            event_ids: Vec::new(),
            first_version: version + 1,
            version,
            last_position: None,
            state,
            conflicts,
            repeated: false,
        }
    }

    /// What a command did once its events are stored: the new state, which is cached, and a
    /// snapshot when the version crossed a multiple of the snapshot interval.
    fn finish(
        &self,
        stream: StreamKey<'_>,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        event_ids: Vec<Uuid>,
        range: AppendedRange,
        conflicts: u32,
    ) -> Executed<A> {
        let Loaded {
            mut state, version, ..
        } = loaded;
        for event in &events {
            state.apply_event(event);
        }
        if let Some(every) = self.snapshot_interval
            && version / every != range.last_version / every
        {
            self.save_snapshot(stream, &state, range.last_version);
        }
        self.remember(stream, &state, range.last_version);
        Executed {
            event_ids,
            events,
            first_version: range.first_version,
            version: range.last_version,
            last_position: Some(range.last_position),
            state,
            conflicts,
            repeated: false,
        }
    }

    /// Saves a snapshot off the command's path: in a task of its own when a tokio runtime runs
    /// (the command does not wait for it; [`flush_snapshots`](Self::flush_snapshots) does),
    /// else not at all. A failure only costs a longer replay later, so it is logged, not
    /// raised; and of two racing saves the store keeps the newer snapshot.
    fn save_snapshot(&self, stream: StreamKey<'_>, state: &A, version: u64) {
        let span = tracing::debug_span!("es.snapshot", %stream, version);
        let state = match state.encode_state() {
            None => return,
            Some(Ok(state)) => state,
            Some(Err(error)) => {
                span.in_scope(|| tracing::warn!(%error, "snapshot not saved"));
                return;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            span.in_scope(|| tracing::debug!("no tokio runtime to save the snapshot from"));
            return;
        };
        let snapshot = Snapshot {
            tenant: stream.tenant.to_owned(),
            stream_type: stream.stream_type.to_owned(),
            stream_id: stream.id.to_owned(),
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
        let mut pending = self.snapshots.lock();
        // Reap the saves that finished, so the set holds only running ones.
        while pending.try_join_next().is_some() {}
        pending.spawn_on(save, &runtime);
    }

    fn cached(&self, stream: StreamKey<'_>) -> Option<Loaded<A>> {
        let cached = self.cache.as_ref()?.get(&gate_key(stream))?;
        Some(Loaded {
            started_from: StartedFrom::Cache(cached.version),
            ..cached
        })
    }

    fn remember(&self, stream: StreamKey<'_>, state: &A, version: u64) {
        if let Some(cache) = &self.cache {
            cache.put(&gate_key(stream), state, version);
        }
    }

    fn forget(&self, stream: StreamKey<'_>) {
        if let Some(cache) = &self.cache {
            cache.remove(&gate_key(stream));
        }
    }
}

impl PendingSnapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, tokio::task::JoinSet<()>> {
        // A panic cannot leave the set half-changed: it is only spawned into and drained.
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A stream's key within one repository (its type is the repository's): tenant and id, joined
/// by NUL, which neither may contain.
fn gate_key(stream: StreamKey<'_>) -> String {
    let mut key = String::with_capacity(stream.tenant.len() + 1 + stream.id.len());
    key.push_str(stream.tenant);
    key.push('\0');
    key.push_str(stream.id);
    key
}

/// The namespace of event ids derived from command ids (UUID version 5).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b6e_52a4_4b8e_9d1e_0c0e_5e57_1d01);

/// The ids of a command's events: random, or derived from an idempotent command's id, its
/// type and the stream, so that executing the command again yields the very same ids.
struct EventIds {
    derived: bool,
    /// `tenant NUL type NUL id NUL command type NUL command id NUL`, the name the ids derive
    /// from (with the event's index appended).
    seed: Vec<u8>,
}

impl EventIds {
    fn new<C>(stream: StreamKey<'_>, context: &CommandContext) -> Self {
        if !context.is_idempotent() {
            return Self {
                derived: false,
                seed: Vec::new(),
            };
        }
        let mut seed = Vec::new();
        for part in [
            stream.tenant,
            stream.stream_type,
            stream.id,
            std::any::type_name::<C>(),
            context.command_id(),
        ] {
            seed.extend_from_slice(part.as_bytes());
            seed.push(0);
        }
        Self {
            derived: true,
            seed,
        }
    }

    /// The id of the command's `index`th event: derived, or fresh for a command that is not
    /// idempotent (each attempt is then a new batch).
    fn id(&self, index: usize) -> Uuid {
        if !self.derived {
            return Uuid::new_v4();
        }
        let mut name = self.seed.clone();
        name.extend_from_slice(index.to_string().as_bytes());
        Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
    }
}

impl<A: Default> Default for Loaded<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
            started_from: StartedFrom::Empty,
        }
    }
}
