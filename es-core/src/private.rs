//! What generated code needs from the runtime. Not public API: names here may change in any
//! release. Generated code reaches everything through `::es_core::__private::...`.

pub use ::core;
pub use ::schemars;
pub use ::serde;
pub use ::serde_json;
pub use ::std;

pub use crate::aggregate::{Aggregate, Apply};
pub use crate::event::{DecodeError, Event, EventSchema, EventType};
pub use crate::json::{EncodeError, RawJson};

/// Folds one event into an aggregate; `#[derive(Event)]` implements it for every aggregate that
/// has apply logic for each of the enum's events, so a missing one names the aggregate and event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the event enum of aggregate `{A}`",
    note = "`event = ...` in `#[aggregate(...)]` names an enum with `#[derive(es_core::Event)]`"
)]
pub trait Dispatch<A> {
    /// Calls the aggregate's `Apply` implementation for this event.
    fn dispatch(&self, aggregate: &mut A);
}

/// One step of an upcast chain: the payload of an older version converted into the next one.
#[diagnostic::on_unimplemented(
    message = "no upcast step from `{From}` to `{Self}`",
    label = "`{Self}` does not implement `From<{From}>`",
    note = "write `impl From<{From}> for {Self}`, or name a conversion function: `upcast(N = {From} with your_function)`"
)]
pub trait UpcastFrom<From>: Sized {
    /// Converts the older payload.
    fn upcast_from(older: From) -> Self;
}

impl<From, To: core::convert::From<From>> UpcastFrom<From> for To {
    #[inline]
    fn upcast_from(older: From) -> Self {
        To::from(older)
    }
}

/// Payload types are serialized; a bound that says what to derive when it is missing.
#[diagnostic::on_unimplemented(
    message = "the event payload `{Self}` does not implement `serde::Serialize`",
    label = "payloads are stored as JSON: add `#[derive(serde::Serialize)]` to `{Self}`",
    note = "event payloads derive `Serialize`, `Deserialize` and `schemars::JsonSchema`: `#[derive(Serialize, Deserialize, JsonSchema)]` (Cargo.toml: serde with the `derive` feature, schemars = \"1\")"
)]
pub trait PayloadSerialize: serde::Serialize {}

impl<T: serde::Serialize + ?Sized> PayloadSerialize for T {}

/// Payload types are deserialized, at every version.
#[diagnostic::on_unimplemented(
    message = "the event payload `{Self}` does not implement `serde::Deserialize`",
    label = "stored payloads are read back: add `#[derive(serde::Deserialize)]` to `{Self}`",
    note = "event payloads derive `Serialize`, `Deserialize` and `schemars::JsonSchema`: `#[derive(Serialize, Deserialize, JsonSchema)]` (Cargo.toml: serde with the `derive` feature, schemars = \"1\")"
)]
pub trait PayloadDeserialize: serde::de::DeserializeOwned {}

impl<T: serde::de::DeserializeOwned> PayloadDeserialize for T {}

/// Payload types have a JSON Schema, at every version.
#[diagnostic::on_unimplemented(
    message = "the event payload `{Self}` does not implement `schemars::JsonSchema`",
    label = "every event version has a JSON Schema: add `#[derive(schemars::JsonSchema)]` to `{Self}`",
    note = "event payloads derive `Serialize`, `Deserialize` and `schemars::JsonSchema`: `#[derive(Serialize, Deserialize, JsonSchema)]` (Cargo.toml: serde with the `derive` feature, schemars = \"1\")"
)]
pub trait PayloadSchema: schemars::JsonSchema {}

impl<T: schemars::JsonSchema + ?Sized> PayloadSchema for T {}

/// Serializes a payload.
#[inline]
pub fn encode<T: PayloadSerialize + ?Sized>(payload: &T) -> Result<RawJson, EncodeError> {
    RawJson::try_encode(payload)
}

/// Serializes the aggregate's state for a snapshot.
#[inline]
pub fn encode_state<T: serde::Serialize + ?Sized>(state: &T) -> Result<RawJson, serde_json::Error> {
    RawJson::encode(state)
}

/// Deserializes the payload of `event_type` at `version` as `T`.
#[inline]
pub fn decode<T: PayloadDeserialize>(
    event_type: &str,
    version: u32,
    payload: &str,
) -> Result<T, DecodeError> {
    serde_json::from_str(payload).map_err(|source| DecodeError::InvalidPayload {
        event_type: event_type.to_owned(),
        version,
        source,
    })
}

/// No variant is called `event_type`.
#[cold]
pub fn unknown_type(event_type: &str) -> DecodeError {
    DecodeError::UnknownType {
        event_type: event_type.to_owned(),
    }
}

/// `version` is newer than `current`, or older with no upcast step.
#[cold]
pub fn unsupported_version(event_type: &str, version: u32, current: u32) -> DecodeError {
    if version > current {
        DecodeError::NewerVersion {
            event_type: event_type.to_owned(),
            version,
            current,
        }
    } else {
        DecodeError::NoUpcastPath {
            event_type: event_type.to_owned(),
            version,
        }
    }
}

/// Checks the payload of an event without data: any JSON value is accepted (fields added by a
/// newer writer are ignored), but it must be JSON.
#[inline]
pub fn decode_unit(event_type: &str, version: u32, payload: &str) -> Result<(), DecodeError> {
    decode::<serde::de::IgnoredAny>(event_type, version, payload).map(drop)
}

/// The schema of an event without data: an object with no required fields.
pub fn unit_schema(event_type: &'static str, version: u32) -> EventSchema {
    EventSchema {
        event_type,
        version,
        schema: crate::schema::stamp(
            schemars::json_schema!({ "type": "object" }),
            event_type,
            version,
        ),
    }
}

/// The schema of a payload type, generated on its own.
pub fn schema<T: PayloadSchema + ?Sized>(event_type: &'static str, version: u32) -> EventSchema {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    EventSchema {
        event_type,
        version,
        schema: crate::schema::stamp(schema, event_type, version),
    }
}
