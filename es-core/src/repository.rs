//! [`Repository`]: loads aggregates from a store and executes commands on them.

use std::marker::PhantomData;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Handle};
use crate::envelope::{CommandContext, NewEvent, Position};
use crate::event::{DecodeError, Event};
use crate::json::RawJson;
use crate::store::{
    AppendOutcome, EventStore, ExpectedVersion, ReplayedEvent, Snapshot, StoreError, Until,
};

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
    /// How many concurrency conflicts were met (and retried) before it went through.
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
    aggregate: PhantomData<fn() -> A>,
}

impl<A, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            max_retries: self.max_retries,
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
            aggregate: PhantomData,
        }
    }

    /// Sets how many times a command is decided again after a concurrency conflict.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the current state: from the latest valid snapshot plus newer events (P10).
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
            snapshot_version = tracing::field::Empty,
            events = tracing::field::Empty,
            version = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let start = match until {
                // A snapshot says nothing about when its events were recorded.
                Until::RecordedAt(_) => None,
                Until::End => self.valid_snapshot(id, u64::MAX).await,
                Until::Version(version) => self.valid_snapshot(id, version).await,
            };
            if let Some(start) = &start {
                tracing::Span::current().record("snapshot_version", start.version);
            }
            let (loaded, events) = self.fold(id, start.unwrap_or_default(), until).await?;
            let span = tracing::Span::current();
            span.record("events", events);
            span.record("version", loaded.version);
            span.record("elapsed_us", started.elapsed().as_micros() as u64);
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
            Ok(state) => Some(Loaded {
                state,
                version: snapshot.stream_version,
            }),
            Err(error) => {
                tracing::warn!(stream_id = id, %error, "undecodable snapshot ignored, replaying all events");
                None
            }
        }
    }

    /// Loads the aggregate, decides `command`, appends the events expecting the loaded version,
    /// and on a concurrency conflict does it all again, up to the retry limit (P7). Safe because
    /// deciding is pure.
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
    /// decides on the empty state and appends expecting no stream, one round trip. If the
    /// stream exists after all (a conflict), or the command is rejected on the empty state, it
    /// continues as [`execute`](Self::execute) does, on the loaded state, so the outcome is
    /// always the one `execute` would give.
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
        mut assume_new: bool,
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
            let metadata =
                RawJson::encode(&context.metadata()).map_err(|source| ExecuteError::Encode {
                    stream_id: id.to_owned(),
                    event_type: "metadata",
                    source,
                })?;
            let mut conflicts = 0;
            loop {
                let loaded = if assume_new {
                    check_id(id)?;
                    Loaded::default()
                } else {
                    self.load(id).await?
                };
                let decided = tracing::debug_span!("es.decide", events = tracing::field::Empty)
                    .in_scope(|| {
                        let decided = loaded.state.handle(command);
                        if let Ok(events) = &decided {
                            tracing::Span::current().record("events", events.len());
                        }
                        decided
                    });
                let events = match decided {
                    Ok(events) => events,
                    // Rejected on a state that was assumed, not loaded: decide on the real one.
                    Err(_) if assume_new => {
                        assume_new = false;
                        continue;
                    }
                    Err(error) => return Err(ExecuteError::Rejected(error)),
                };
                let assumed = std::mem::replace(&mut assume_new, false);
                match self.append(id, loaded, events, &metadata).await {
                    Ok(mut executed) => {
                        executed.conflicts = conflicts;
                        let span = tracing::Span::current();
                        span.record("events", executed.events.len());
                        span.record("conflicts", conflicts);
                        span.record("elapsed_us", started.elapsed().as_micros() as u64);
                        return Ok(executed);
                    }
                    // The stream exists after all: not a race, go on as `execute`.
                    Err(ExecuteError::Store(StoreError::Conflict { .. })) if assumed => {}
                    Err(ExecuteError::Store(StoreError::Conflict { .. }))
                        if conflicts < self.max_retries =>
                    {
                        conflicts += 1;
                        tracing::debug!(
                            stream_id = id,
                            conflicts,
                            "concurrency conflict, deciding again"
                        );
                    }
                    Err(ExecuteError::Store(StoreError::Conflict { .. })) => {
                        return Err(ExecuteError::TooManyConflicts {
                            stream_id: id.to_owned(),
                            attempts: conflicts + 1,
                        });
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn append<E>(
        &self,
        id: &str,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        metadata: &RawJson,
    ) -> Result<Executed<A>, ExecuteError<E>> {
        let Loaded { mut state, version } = loaded;
        if events.is_empty() {
            return Ok(Executed {
                events,
                event_ids: Vec::new(),
                first_version: version + 1,
                version,
                last_position: None,
                state,
                conflicts: 0,
            });
        }
        let mut batch = Vec::with_capacity(events.len());
        for event in &events {
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
        let range = match outcome {
            AppendOutcome::Appended(range) | AppendOutcome::AlreadyAppended(range) => range,
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
        Ok(Executed {
            events,
            event_ids,
            first_version: range.first_version,
            version: range.last_version,
            last_position: Some(range.last_position),
            state,
            conflicts: 0,
        })
    }

    /// Saves a snapshot; a failure only costs a longer replay later, so it is logged, not raised.
    async fn save_snapshot(&self, id: &str, state: &A, version: u64) {
        let Some(encoded) = state.encode_state() else {
            return;
        };
        let result = match encoded {
            Ok(state) => {
                let snapshot = Snapshot {
                    stream_type: A::NAME.to_owned(),
                    stream_id: id.to_owned(),
                    stream_version: version,
                    state_version: A::STATE_VERSION,
                    state,
                    taken_at: Utc::now(),
                };
                self.store
                    .save_snapshot(&snapshot)
                    .await
                    .map_err(|error| error.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(()) => tracing::debug!(stream_id = id, version, "snapshot saved"),
            Err(error) => tracing::warn!(stream_id = id, version, %error, "snapshot not saved"),
        }
    }
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
