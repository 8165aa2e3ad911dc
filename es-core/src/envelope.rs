//! What a store records around a payload, and the metadata every event carries.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::json::RawJson;

/// Where an event stands in the global log.
///
/// The log is ordered by `(transaction, sequence)`: `sequence` is the unique global position
/// taken at insert, `transaction` orders the writing transactions so that a reader can wait for
/// a transaction that is still open instead of skipping past its events (see es-postgres).
/// Stores with a single writer use the append's own counter as `transaction`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Position {
    /// The writing transaction's place in commit-safe order.
    pub transaction: u64,
    /// The event's unique global sequence number.
    pub sequence: u64,
}

impl Position {
    /// Before the first event: reading after it reads the whole log.
    pub const START: Position = Position {
        transaction: 0,
        sequence: 0,
    };
}

impl fmt::Display for Position {
    /// `transaction/sequence`, e.g. `812/40`: what [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction, self.sequence)
    }
}

/// Text that is not a position (`transaction/sequence`, two unsigned numbers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a position: expected `transaction/sequence`, e.g. `812/40`")]
pub struct InvalidPosition(String);

impl std::str::FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPosition(crate::stream::shown(text).to_string());
        let (transaction, sequence) = text.split_once('/').ok_or_else(invalid)?;
        Ok(Position {
            transaction: transaction.parse().map_err(|_| invalid())?,
            sequence: sequence.parse().map_err(|_| invalid())?,
        })
    }
}

/// Context stored with every event: who and what caused it, for tracing a request through
/// services and for audits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id shared by everything one user request caused (an `x-request-id`, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the command (or event) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Who acted: a user or service account id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// A distributed trace id (W3C trace context, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The service or program that wrote the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Free-form fields.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Who issues a command and why, and how it must be executed: the metadata its events carry,
/// the version the caller saw, and the key that makes a retried command idempotent.
///
/// Events produced by the command get its correlation id (the command id unless set) and the
/// command's id as causation id.
///
/// ```
/// use es_core::CommandContext;
///
/// // In a web handler: the request's headers become the command's context.
/// let context = CommandContext::new()
///     .with_correlation_id("req-7f3a")             // x-request-id
///     .with_command_id("3b9d0f0e-client-key")      // Idempotency-Key
///     .expecting_version(4)                        // If-Match
///     .with_actor("user-42");
/// assert!(context.is_idempotent());
/// assert_eq!(context.expected_version(), Some(4));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    command_id: String,
    idempotent: bool,
    correlation_id: Option<String>,
    expected_version: Option<u64>,
    actor_id: Option<String>,
    trace_id: Option<String>,
    source: Option<String>,
    extra: BTreeMap<String, serde_json::Value>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A context for a new request: a fresh command id (which is also the correlation id),
    /// nothing else set.
    pub fn new() -> Self {
        Self {
            command_id: Uuid::new_v4().to_string(),
            idempotent: false,
            correlation_id: None,
            expected_version: None,
            actor_id: None,
            trace_id: None,
            source: None,
            extra: BTreeMap::new(),
        }
    }

    /// A context for a command issued in reaction to `event`: it joins the event's correlation
    /// and names the event as its cause.
    pub fn caused_by(event: &RecordedEvent) -> Self {
        let mut context = Self::new();
        context.correlation_id = event.metadata().ok().and_then(|m| m.correlation_id);
        context.command_id = event.event_id.to_string();
        context.idempotent = true;
        context
    }

    /// Names the command (an `Idempotency-Key` header, a message id): the command becomes
    /// idempotent. Its event ids are derived from this id and the stream, so executing it again
    /// (a client retrying after a lost reply) writes nothing and returns the first execution's
    /// outcome.
    pub fn with_command_id(mut self, command_id: impl Into<String>) -> Self {
        self.command_id = command_id.into();
        self.idempotent = true;
        self
    }

    /// Sets the correlation id (any string: an `x-request-id`, a trace's id).
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The command must be decided on this stream version, the one the caller saw (an HTTP
    /// `If-Match`): if the stream is at another version, the command fails with a conflict
    /// carrying the actual version, and is not retried.
    pub fn expecting_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor_id: impl Into<String>) -> Self {
        self.actor_id = Some(actor_id.into());
        self
    }

    /// Sets the trace id.
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Sets the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds a free-form field.
    pub fn with_field(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// This command's id: stored as the causation id of its events.
    pub fn command_id(&self) -> &str {
        &self.command_id
    }

    /// Whether the command was named ([`with_command_id`](Self::with_command_id)) and so is
    /// idempotent.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The correlation id its events carry: the one set, else the command id.
    pub fn correlation_id(&self) -> &str {
        self.correlation_id.as_deref().unwrap_or(&self.command_id)
    }

    /// The version the command must be decided on, if the caller named one.
    pub fn expected_version(&self) -> Option<u64> {
        self.expected_version
    }

    /// The metadata of the events this command produces.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id().to_owned()),
            causation_id: Some(self.command_id.clone()),
            actor_id: self.actor_id.clone(),
            trace_id: self.trace_id.clone(),
            source: self.source.clone(),
            extra: self.extra.clone(),
        }
    }
}

/// An event ready to append: its id, type, version, payload and metadata. The store adds the
/// stream, version, position and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; appending the same id twice is detected (idempotent append).
    pub event_id: Uuid,
    /// The stable event type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload.
    pub payload: RawJson,
    /// The metadata.
    pub metadata: RawJson,
}

impl NewEvent {
    /// Encodes a typed event with a fresh id.
    pub fn encode<E: crate::Event>(
        event: &E,
        metadata: &Metadata,
    ) -> Result<Self, crate::json::EncodeError> {
        Ok(Self {
            event_id: Uuid::new_v4(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.encode()?,
            metadata: RawJson::try_encode(metadata)?,
        })
    }
}

/// An event as recorded in a store. Payload-agnostic: typed decoding happens above.
///
/// It serializes (serde) with its payload and metadata as JSON documents, for APIs that show a
/// stream's history without decoding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The tenant of its stream.
    pub tenant: String,
    /// The stream's type: the aggregate type.
    pub stream_type: String,
    /// The stream's id: the aggregate id.
    pub stream_id: String,
    /// The event's version within its stream, starting at 1.
    pub stream_version: u64,
    /// The event's place in the global log.
    pub position: Position,
    /// The event's unique id.
    pub event_id: Uuid,
    /// The stable event type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload as stored.
    pub payload: RawJson,
    /// The metadata as stored.
    pub metadata: RawJson,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The stream it belongs to.
    pub fn stream(&self) -> crate::StreamKey<'_> {
        crate::StreamKey {
            tenant: &self.tenant,
            stream_type: &self.stream_type,
            id: &self.stream_id,
        }
    }

    /// Parses the metadata. Kept lazy: loading an aggregate never needs it.
    pub fn metadata(&self) -> Result<Metadata, serde_json::Error> {
        self.metadata.decode()
    }

    /// Decodes the payload as an event of `E`, upcasting older versions.
    pub fn decode<E: crate::Event>(&self) -> Result<E, crate::DecodeError> {
        E::decode(&self.event_type, self.schema_version, self.payload.as_str())
    }
}
