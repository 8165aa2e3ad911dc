//! What a store records around a payload (P6), and the metadata every event carries (P12).

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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction, self.sequence)
    }
}

/// Context stored with every event (seed 000's `EventMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id shared by everything one user request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the command (or event) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
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

/// Who issues a command and why: the metadata the command's events will carry.
///
/// Events produced by the command get its correlation id (a new one unless set) and the
/// command's id as causation id.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    /// This command's id, stored as the causation id of its events.
    pub command_id: Uuid,
    /// The correlation id its events carry.
    pub correlation_id: Uuid,
    /// Who issues the command.
    pub actor_id: Option<String>,
    /// The trace the command belongs to.
    pub trace_id: Option<String>,
    /// The service or program issuing it.
    pub source: Option<String>,
    /// Free-form fields copied into each event's metadata.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A context for a new request: fresh command and correlation ids, nothing else set.
    pub fn new() -> Self {
        let command_id = Uuid::new_v4();
        Self {
            command_id,
            correlation_id: command_id,
            actor_id: None,
            trace_id: None,
            source: None,
            extra: BTreeMap::new(),
        }
    }

    /// A context for a command issued in reaction to `event`: it joins the event's correlation.
    pub fn caused_by(event: &RecordedEvent) -> Self {
        let mut context = Self::new();
        if let Some(correlation_id) = event.metadata().ok().and_then(|m| m.correlation_id) {
            context.correlation_id = correlation_id;
        }
        context
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor_id: impl Into<String>) -> Self {
        self.actor_id = Some(actor_id.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
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

    /// The metadata of the events this command produces.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.command_id),
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
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_id: Uuid::new_v4(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.encode()?,
            metadata: RawJson::encode(metadata)?,
        })
    }
}

/// An event as recorded in a store (P6). Payload-agnostic: typed decoding happens above.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The aggregate type the stream belongs to.
    pub stream_type: String,
    /// The stream (aggregate instance) id.
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
    /// Parses the metadata. Kept lazy: loading an aggregate never needs it.
    pub fn metadata(&self) -> Result<Metadata, serde_json::Error> {
        self.metadata.decode()
    }

    /// Decodes the payload as an event of `E`, upcasting older versions.
    pub fn decode<E: crate::Event>(&self) -> Result<E, crate::DecodeError> {
        E::decode(&self.event_type, self.schema_version, self.payload.as_str())
    }
}
