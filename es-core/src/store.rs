//! The store interface every backend implements: append under an expected version, stream
//! reads, global-log reads and snapshots. Stores see payloads as JSON text only: typed decoding
//! happens above them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::contract::InputRule;
use crate::envelope::{NewEvent, Position, RecordedEvent};
use crate::json::RawJson;
use crate::stream::{LogScope, StreamKey, StreamKeyBuf};

/// The state a stream must be in for an append to go through (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream's last version must be exactly this (`Exact(0)` means no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` (`None`: no stream) satisfies this.
    pub fn admits(self, current: Option<u64>) -> bool {
        match (self, current) {
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::NoStream | ExpectedVersion::Exact(0), None) => true,
            (ExpectedVersion::StreamExists, Some(_)) => true,
            (ExpectedVersion::Exact(expected), Some(actual)) => expected == actual,
            _ => false,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// How far a stream read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Until {
    /// To the stream's last event.
    #[default]
    End,
    /// Up to and including this stream version (time travel by version).
    Version(u64),
    /// Events recorded at or before this time (time travel by time).
    RecordedAt(DateTime<Utc>),
}

impl Until {
    /// Whether an event at `version` recorded at `recorded_at` is within the bound.
    pub fn includes(self, version: u64, recorded_at: DateTime<Utc>) -> bool {
        match self {
            Until::End => true,
            Until::Version(last) => version <= last,
            Until::RecordedAt(time) => recorded_at <= time,
        }
    }
}

/// The versions and position an append wrote (or had written before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedRange {
    /// The stream version of the batch's first event.
    pub first_version: u64,
    /// The stream version of the batch's last event: the stream's version after the append.
    pub last_version: u64,
    /// The global position of the batch's last event.
    pub last_position: Position,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The batch was written.
    Appended(AppendedRange),
    /// The very same batch (same event ids, same stream, same order) was written before, for
    /// example by an earlier attempt whose reply was lost; nothing was written now.
    AlreadyAppended(AppendedRange),
}

impl AppendOutcome {
    /// The versions and position of the batch, whether written now or before.
    pub fn range(&self) -> AppendedRange {
        match self {
            AppendOutcome::Appended(range) | AppendOutcome::AlreadyAppended(range) => *range,
        }
    }
}

/// A saved aggregate state at a stream version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The tenant of the stream.
    pub tenant: String,
    /// The aggregate type (the stream's type).
    pub stream_type: String,
    /// The stream's id.
    pub stream_id: String,
    /// The stream version the state includes.
    pub stream_version: u64,
    /// The schema version of the state (the aggregate's `STATE_VERSION` when taken).
    pub state_version: u32,
    /// The serialized state.
    pub state: RawJson,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

impl Snapshot {
    /// The stream it belongs to.
    pub fn stream(&self) -> StreamKey<'_> {
        StreamKey {
            tenant: &self.tenant,
            stream_type: &self.stream_type,
            id: &self.stream_id,
        }
    }
}

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not in the expected state.
    #[error("concurrency conflict on stream `{stream}`: expected {expected}, found {}", describe_version(*.actual))]
    Conflict {
        /// The stream.
        stream: StreamKeyBuf,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's last version (`None`: no stream).
        actual: Option<u64>,
    },
    /// An event id was already used by another event than the one at the same place of this batch.
    #[error(
        "event id {event_id} is already used by stream `{existing_stream}` version {existing_version}; a batch can be re-sent only as it was"
    )]
    DuplicateEventId {
        /// The reused id.
        event_id: Uuid,
        /// The stream that holds it.
        existing_stream: StreamKeyBuf,
        /// Its version there.
        existing_version: u64,
    },
    /// The input breaks a rule of the input contract ([`crate::contract`]); nothing was written.
    #[error("invalid input for stream `{stream}`: {rule}")]
    InvalidInput {
        /// The stream.
        stream: StreamKeyBuf,
        /// The rule broken.
        rule: InputRule,
    },
    /// A stored row cannot be represented (for example a negative version).
    #[error("stream `{stream}` holds an unreadable row at version {stream_version}: {reason}")]
    CorruptRow {
        /// The stream, as far as the row tells.
        stream: String,
        /// The row's version.
        stream_version: i64,
        /// What is wrong.
        reason: String,
    },
    /// A projection runner no longer holds its projection's lock (another runner may have
    /// taken it over); the transaction was not committed.
    #[error("projection `{projection}` lost its lock: another runner may have taken it over")]
    LockLost {
        /// The projection.
        projection: String,
    },
    /// The database could not be reached, or was too busy to answer in time (a pool timeout, a
    /// dropped connection, a lock wait that ran out). Nothing is known to be written: retrying
    /// later may succeed; see [`StoreError::is_transient`].
    #[error("{operation} failed, the database is unavailable: {source}")]
    Unavailable {
        /// What the store was doing, e.g. "append to stream `order/1`".
        operation: String,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database or driver failed in a way retrying will not mend.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What the store was doing, e.g. "append to stream `order/1`".
        operation: String,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Wraps a driver error with what the store was doing.
    pub fn backend(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// Wraps a driver error that retrying later may mend (see [`StoreError::Unavailable`]).
    pub fn unavailable(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Unavailable {
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// Whether the same call may succeed later unchanged: the database was unavailable or busy
    /// ([`StoreError::Unavailable`]). A service answers these with "try again" (HTTP 503);
    /// conflicts, invalid input and corrupt rows need another request or a person.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

fn describe_version(version: Option<u64>) -> String {
    match version {
        Some(version) => format!("version {version}"),
        None => "no stream".to_owned(),
    }
}

/// One stored event as a load needs it, borrowed from the row a store read it from: see
/// [`EventStore::replay_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedEvent<'a> {
    /// The event's version in its stream (1-based).
    pub stream_version: u64,
    /// The stored event type name.
    pub event_type: &'a str,
    /// The version of the payload's schema.
    pub schema_version: u32,
    /// The payload, as JSON text.
    pub payload: &'a str,
}

/// Events of one stream, in version order, read lazily.
pub type EventStream<'a> =
    Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'a>>;

/// A place events are stored. Cheap to clone (stores share a pool or an `Arc`).
///
/// A stream is named by a [`StreamKey`]: tenant, stream type and id. What a store must
/// implement is `append`, `read_stream`, `read_all` and `find_event`; the other methods have
/// correct defaults that a store overrides to be faster (`replay_stream`, `stream_version`) or
/// to keep snapshots (`save_snapshot`, `load_snapshot`: without them, every load replays the
/// whole stream). Every implementation passes the conformance suite
/// (`es_core::conformance`, feature `conformance`) and checks its input with
/// [`crate::contract`] first, so all stores accept and refuse the same input.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends a non-empty batch atomically to `stream` if the stream is in the `expected`
    /// state; the first event gets version `current + 1`.
    ///
    /// Re-sending a batch that was written before returns [`AppendOutcome::AlreadyAppended`]; an
    /// id used elsewhere is [`StoreError::DuplicateEventId`]. The idempotency check comes before
    /// the version check, so a re-sent batch does not report a conflict. A batch that both
    /// fails its expectation and reuses an id of another batch may get either error (a store
    /// may skip looking the ids up when the batch cannot be a re-send); sent again at the
    /// stream's current version, it gets [`StoreError::DuplicateEventId`]. Input that breaks
    /// the [input contract](crate::contract) is [`StoreError::InvalidInput`], and nothing is
    /// written.
    fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// Streams the events of `stream` from `from_version` (inclusive) in version order, up to
    /// `until`. Memory use does not grow with the stream's length.
    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a>;

    /// Passes the events of `stream` from `from_version` (inclusive) in version order, up to
    /// `until`, to `visit`, and returns how many it passed; the first error (the store's or
    /// `visit`'s) ends the replay.
    ///
    /// This is what loading an aggregate reads: only the columns a fold needs, each event
    /// borrowed from its row, nothing allocated per event where the store can help it. The
    /// default goes through [`read_stream`](Self::read_stream); stores override it with a
    /// narrower read. Memory use does not grow with the stream's length.
    fn replay_stream<E, F>(
        &self,
        stream: StreamKey<'_>,
        from_version: u64,
        until: Until,
        mut visit: F,
    ) -> impl Future<Output = Result<u64, E>> + Send
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        async move {
            let mut events = self.read_stream(stream, from_version, until);
            let mut replayed = 0;
            while let Some(recorded) = events.next().await {
                let recorded = recorded?;
                visit(ReplayedEvent {
                    stream_version: recorded.stream_version,
                    event_type: &recorded.event_type,
                    schema_version: recorded.schema_version,
                    payload: recorded.payload.as_str(),
                })?;
                replayed += 1;
            }
            Ok(replayed)
        }
    }

    /// The stream's last version, `None` when it does not exist. The default replays the
    /// stream; stores override it with a look at the last row.
    fn stream_version(
        &self,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        async move {
            let mut last = None;
            self.replay_stream(stream, 1, Until::End, |event| {
                last = Some(event.stream_version);
                Ok::<_, StoreError>(())
            })
            .await?;
            Ok(last)
        }
    }

    /// Up to `limit` events of the global log in `scope` strictly after `after`, in log order.
    /// A reader that continues from the last position it got never skips an event, even while
    /// writers commit out of order.
    fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The event with this id, wherever it is in `scope`: every tenant's streams, or one
    /// tenant's (an event of another tenant is not found).
    fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// Saves a snapshot, replacing the stream's previous one unless that one is at a newer
    /// stream version: of two saves that race, the newer snapshot stays, whichever lands last.
    ///
    /// The default keeps nothing, which is correct (snapshots only save replay time): a store
    /// without snapshots overrides neither this nor [`load_snapshot`](Self::load_snapshot).
    fn save_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = snapshot;
        async { Ok(()) }
    }

    /// The stream's latest snapshot. The default has none.
    fn load_snapshot(
        &self,
        stream: StreamKey<'_>,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        let _ = stream;
        async { Ok(None) }
    }
}
