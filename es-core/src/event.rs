//! Domain events: the [`Event`] trait that `#[derive(Event)]` implements, and decoding errors.

use crate::json::RawJson;

/// What one event type of an [`Event`] enum is called and which version it is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// The stable name stored with every event (the variant name unless `name = "..."`).
    pub name: &'static str,
    /// Former names that still decode as this event.
    pub aliases: &'static [&'static str],
    /// The current schema version; every version below it decodes through the upcast chain.
    pub version: u32,
}

/// The JSON Schema of one event type at one version.
///
/// Each schema is self-contained: it is generated on its own, so its `$defs` hold exactly the
/// types its payload uses; it declares its dialect (`$schema`, JSON Schema 2020-12) and is
/// titled by the stable event name and version (`"PriceChanged v1"`), never by a Rust type
/// name, so renaming a payload struct (as when it becomes an upcast step) changes nothing.
#[derive(Debug, Clone)]
pub struct EventSchema {
    /// The event type's stable name.
    pub event_type: &'static str,
    /// The schema version this schema describes.
    pub version: u32,
    /// The schema of the stored payload at that version.
    pub schema: schemars::Schema,
}

/// A closed set of domain events, usually an enum with `#[derive(Event)]`.
///
/// Encoding yields the payload alone; the event type name and schema version are stored beside
/// it, so the stored JSON is the payload struct's own, readable from any language.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event enum",
    label = "not a `#[derive(Event)]` enum",
    note = "derive it on the enum of the aggregate's events: `#[derive(es_core::Event)] pub enum {Self} {{ ... }}`"
)]
pub trait Event: Sized + Send + Sync + 'static {
    /// Every event type of this set, in declaration order.
    const TYPES: &'static [EventType];

    /// The stable name of this event's type.
    fn event_type(&self) -> &'static str;

    /// The schema version this event encodes at (always the current one).
    fn schema_version(&self) -> u32;

    /// Serializes the payload (without any enum tag).
    fn encode(&self) -> Result<RawJson, crate::json::EncodeError>;

    /// Decodes a stored payload, upcasting older versions to the current payload type.
    fn decode(event_type: &str, schema_version: u32, payload: &str) -> Result<Self, DecodeError>;

    /// The JSON Schema of every event type at every version it can decode, each generated on
    /// its own (see [`EventSchema`]).
    fn schemas() -> Vec<EventSchema>;

    /// Whether `event_type` (a name or an alias) belongs to this set; lets a reader skip other
    /// events without decoding them.
    fn knows(event_type: &str) -> bool {
        Self::TYPES
            .iter()
            .any(|t| t.name == event_type || t.aliases.contains(&event_type))
    }
}

/// Why a stored event could not be turned into a Rust value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No variant has this name or alias.
    #[error("unknown event type `{event_type}`")]
    UnknownType {
        /// The stored event type.
        event_type: String,
    },
    /// The stored version is newer than the code: it was written by a newer release.
    #[error(
        "event `{event_type}` has schema version {version}, newer than version {current} that this code knows"
    )]
    NewerVersion {
        /// The event type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The newest version this code knows.
        current: u32,
    },
    /// An older version with no upcast step leading from it.
    #[error("event `{event_type}` version {version} has no upcast path to the current version")]
    NoUpcastPath {
        /// The event type.
        event_type: String,
        /// The stored version.
        version: u32,
    },
    /// The payload does not match the payload type of its version.
    #[error("invalid payload for event `{event_type}` version {version}: {source}")]
    InvalidPayload {
        /// The event type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// What serde reported.
        source: serde_json::Error,
    },
}
