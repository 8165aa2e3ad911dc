//! JSON text as stored: payloads, metadata and snapshot states travel as text so that a store
//! hands rows to the decoder without an intermediate `serde_json::Value`.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A JSON document kept as text, exactly as a store holds it.
///
/// Stores only build it from columns that hold JSON (PostgreSQL `jsonb`, SQLite text with a
/// `json_valid` check), so it is not validated again here: whatever is wrong with it surfaces as
/// a typed decoding error when it is read.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(String);

impl RawJson {
    /// Wraps JSON text without parsing it; see the type's documentation for why.
    pub fn from_string(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Serializes a value.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        // Kept as the `String` serde_json wrote: shrinking it to a `Box<str>` would copy it.
        serde_json::to_string(value).map(Self)
    }

    /// An empty JSON object, `{}`.
    pub fn empty_object() -> Self {
        Self("{}".into())
    }

    /// Deserializes the text into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Parses the text into a generic JSON value.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<serde_json::Value> for RawJson {
    fn from(value: serde_json::Value) -> Self {
        Self(value.to_string())
    }
}

/// Serializes as the JSON document itself (not as a string holding it), so a recorded event's
/// payload appears in an API response as the object it is.
impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Deserializes any JSON document, keeping its text.
impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(Self(String::from(raw.get())))
    }
}
