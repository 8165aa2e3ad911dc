//! The store contract every backend implements: append under an expected version, stream reads,
//! global-log reads and snapshots. Stores see payloads as JSON text only (P6).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::envelope::{NewEvent, Position, RecordedEvent};
use crate::json::RawJson;

/// The state a stream must be in for an append to go through (optimistic concurrency, P7).
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

/// A saved aggregate state at a stream version (P10).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The aggregate type.
    pub stream_type: String,
    /// The stream.
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

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not in the expected state.
    #[error("concurrency conflict on stream `{stream_id}`: expected {expected}, found {}", describe_version(*.actual))]
    Conflict {
        /// The stream.
        stream_id: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's last version (`None`: no stream).
        actual: Option<u64>,
    },
    /// An event id was already used by another event than the one at the same place of this batch.
    #[error(
        "event id {event_id} is already used by stream `{existing_stream_id}` version {existing_version}; a batch can be re-sent only as it was"
    )]
    DuplicateEventId {
        /// The reused id.
        event_id: Uuid,
        /// The stream that holds it.
        existing_stream_id: String,
        /// Its version there.
        existing_version: u64,
    },
    /// The append request itself is invalid.
    #[error("failed to append to stream `{stream_id}`: {reason}")]
    InvalidAppend {
        /// The stream.
        stream_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored row cannot be represented (for example a negative version).
    #[error("stream `{stream_id}` holds an unreadable row at version {stream_version}: {reason}")]
    CorruptRow {
        /// The stream.
        stream_id: String,
        /// The row's version.
        stream_version: i64,
        /// What is wrong.
        reason: String,
    },
    /// The database or connection failed.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What the store was doing, e.g. "append to stream `order-1`".
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
}

fn describe_version(version: Option<u64>) -> String {
    match version {
        Some(version) => format!("version {version}"),
        None => "no stream".to_owned(),
    }
}

/// The checks every store makes before an append, so all of them refuse the same batches the
/// same way: a batch is not empty and holds each event id once.
pub fn check_batch(stream_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidAppend {
        stream_id: stream_id.to_owned(),
        reason,
    };
    if events.is_empty() {
        return Err(invalid("the batch is empty".to_owned()));
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    match events.iter().find(|event| !seen.insert(event.event_id)) {
        Some(repeated) => Err(invalid(format!(
            "event id {} appears twice in the batch",
            repeated.event_id
        ))),
        None => Ok(()),
    }
}

/// One stored event as a load needs it, borrowed from the row a store read it from: see
/// [`EventStore::replay_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedEvent<'a> {
    /// The stream's type, as stored with the event.
    pub stream_type: &'a str,
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
/// Every implementation passes the same conformance suite (`es_core::conformance`).
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends a non-empty batch atomically to `stream_id` if the stream is in the `expected`
    /// state; the first event gets version `current + 1`.
    ///
    /// Re-sending a batch that was written before returns [`AppendOutcome::AlreadyAppended`]; an
    /// id used elsewhere is [`StoreError::DuplicateEventId`]. The idempotency check comes before
    /// the version check, so a re-sent batch does not report a conflict. A batch that both
    /// fails its expectation and reuses an id of another batch may get either error (a store
    /// may skip looking the ids up when the batch cannot be a re-send); sent again at the
    /// stream's current version, it gets [`StoreError::DuplicateEventId`].
    fn append(
        &self,
        stream_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// Streams the events of `stream_id` from `from_version` (inclusive) in version order, up to
    /// `until`. Memory use does not grow with the stream's length.
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a>;

    /// Passes the events of `stream_id` from `from_version` (inclusive) in version order, up to
    /// `until`, to `visit`, and returns how many it passed; the first error (the store's or
    /// `visit`'s) ends the replay.
    ///
    /// This is what loading an aggregate reads: only the columns a fold needs, each event
    /// borrowed from its row, nothing allocated per event where the store can help it. The
    /// default goes through [`read_stream`](Self::read_stream); stores override it with a
    /// narrower read. Memory use does not grow with the stream's length.
    fn replay_stream<E, F>(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
        mut visit: F,
    ) -> impl Future<Output = Result<u64, E>> + Send
    where
        E: From<StoreError> + Send,
        F: FnMut(ReplayedEvent<'_>) -> Result<(), E> + Send,
    {
        async move {
            let mut events = self.read_stream(stream_id, from_version, until);
            let mut replayed = 0;
            while let Some(recorded) = events.next().await {
                let recorded = recorded?;
                visit(ReplayedEvent {
                    stream_type: &recorded.stream_type,
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

    /// The stream's last version, `None` when it does not exist.
    fn stream_version(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Up to `limit` events of the global log strictly after `after`, in log order. A reader
    /// that continues from the last position it got never skips an event (P9).
    fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Saves a snapshot, replacing the stream's previous one unless that one is at a newer
    /// stream version: of two saves that race, the newer snapshot stays, whichever lands last.
    fn save_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The stream's latest snapshot.
    fn load_snapshot(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;
}
