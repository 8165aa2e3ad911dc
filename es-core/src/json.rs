//! JSON text as stored: payloads, metadata and snapshot states travel as text so that a store
//! hands rows to the decoder without an intermediate `serde_json::Value`.

mod finite;

use std::cell::RefCell;
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

    /// Serializes a value, refusing NaN and the infinities (see [`EncodeError::NonFiniteFloat`]).
    ///
    /// The error is a `serde_json::Error` carrying the message of [`RawJson::try_encode`]'s
    /// typed error, for callers that already hold serde_json errors.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Self::try_encode(value).map_err(serde_json::Error::from)
    }

    /// Serializes a value, refusing NaN and the infinities with a typed error.
    ///
    /// serde_json writes a non-finite `f32` or `f64` as `null`, which the same type cannot read
    /// back as a number: an event stored that way would make its stream fail to load from then
    /// on. So such a value is an error before anything is written, naming where it is.
    ///
    /// ```
    /// use es_core::{EncodeError, RawJson};
    ///
    /// #[derive(serde::Serialize)]
    /// struct Measured { celsius: Vec<f64> }
    ///
    /// let error = RawJson::try_encode(&Measured { celsius: vec![21.5, f64::NAN] }).unwrap_err();
    /// assert!(matches!(&error, EncodeError::NonFiniteFloat { pointer, .. } if pointer == "/celsius/1"));
    /// assert_eq!(
    ///     error.to_string(),
    ///     "cannot encode NaN at `/celsius/1`: JSON has no NaN or infinity, and serde_json would store null, which could not be read back as a number"
    /// );
    /// ```
    pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, EncodeError> {
        let found = RefCell::new(finite::Found::default());
        // Kept as the `String` serde_json wrote: shrinking it to a `Box<str>` would copy it.
        let mut text = Vec::with_capacity(128);
        let mut serializer = serde_json::Serializer::new(&mut text);
        let checked = finite::Finite {
            value,
            found: &found,
        };
        match checked.serialize(&mut serializer) {
            Ok(()) => {
                // serde_json writes only valid UTF-8.
                Ok(Self(String::from_utf8(text).map_err(|_| {
                    EncodeError::Json(serde::ser::Error::custom("serde_json wrote invalid UTF-8"))
                })?))
            }
            Err(error) => {
                let found = found.into_inner();
                match found.value {
                    Some(value) => {
                        let mut pointer = String::new();
                        for segment in found.segments.iter().rev() {
                            pointer.push('/');
                            pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
                        }
                        Err(EncodeError::NonFiniteFloat { pointer, value })
                    }
                    None => Err(EncodeError::Json(error)),
                }
            }
        }
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

/// A value could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An `f32` or `f64` is NaN or infinite. JSON cannot hold it, and serde_json would write
    /// `null` in its place, which the payload type could not read back.
    #[error(
        "cannot encode {} at `{pointer}`: JSON has no NaN or infinity, and serde_json would store null, which could not be read back as a number",
        describe_float(*.value)
    )]
    NonFiniteFloat {
        /// Where the value is, as a JSON pointer (`""` for the value itself). Struct fields and
        /// sequence indexes are named; a map value shows as `*`, since map keys may be data.
        pointer: String,
        /// The value: NaN or an infinity.
        value: f64,
    },
    /// serde reported an error (a map with non-string keys, a failing `Serialize` impl).
    #[error("failed to encode as JSON: {0}")]
    Json(#[source] serde_json::Error),
}

fn describe_float(value: f64) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else if value.is_sign_positive() {
        "infinity"
    } else {
        "-infinity"
    }
}

impl From<EncodeError> for serde_json::Error {
    fn from(error: EncodeError) -> Self {
        match error {
            EncodeError::Json(error) => error,
            other => serde::ser::Error::custom(other),
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::{EncodeError, RawJson};

    #[derive(Serialize)]
    struct Reading {
        sensor: String,
        celsius: f64,
        history: Vec<Option<f32>>,
        by_hour: BTreeMap<String, f64>,
        kind: Kind,
    }

    #[derive(Serialize)]
    enum Kind {
        Calibrated { offset: f64 },
        Pair(f64, f64),
        Single(f64),
        Unknown,
    }

    fn reading() -> Reading {
        Reading {
            sensor: "s-1".into(),
            celsius: 21.5,
            history: vec![Some(1.0), None, Some(-3.25)],
            by_hour: BTreeMap::from([("08".to_owned(), 19.0)]),
            kind: Kind::Calibrated { offset: 0.5 },
        }
    }

    #[track_caller]
    fn refused(value: &impl Serialize) -> (String, f64) {
        match RawJson::try_encode(value) {
            Err(EncodeError::NonFiniteFloat { pointer, value }) => (pointer, value),
            other => panic!("expected a non-finite float error, got {other:?}"),
        }
    }

    #[test]
    fn finite_values_encode_exactly_as_serde_json_writes_them() {
        for kind in [
            Kind::Calibrated { offset: 0.5 },
            Kind::Pair(1.0, 2.0),
            Kind::Single(3.0),
            Kind::Unknown,
        ] {
            let value = Reading { kind, ..reading() };
            assert_eq!(
                RawJson::try_encode(&value).unwrap().as_str(),
                serde_json::to_string(&value).unwrap()
            );
        }
        assert_eq!(
            RawJson::encode(&f64::MAX).unwrap().as_str(),
            "1.7976931348623157e+308"
        );
    }

    #[test]
    fn nan_and_infinities_are_refused_with_their_json_pointer() {
        let mut value = reading();
        value.celsius = f64::NAN;
        let (pointer, found) = refused(&value);
        assert_eq!(pointer, "/celsius");
        assert!(found.is_nan());

        let mut value = reading();
        value.history[2] = Some(f32::INFINITY);
        assert_eq!(refused(&value), ("/history/2".to_owned(), f64::INFINITY));

        let mut value = reading();
        value.by_hour.insert("09".into(), f64::NEG_INFINITY);
        assert_eq!(
            refused(&value),
            ("/by_hour/*".to_owned(), f64::NEG_INFINITY)
        );

        let mut value = reading();
        value.kind = Kind::Calibrated { offset: f64::NAN };
        assert_eq!(refused(&value).0, "/kind/Calibrated/offset");
        value.kind = Kind::Pair(1.0, f64::INFINITY);
        assert_eq!(refused(&value).0, "/kind/Pair/1");
        value.kind = Kind::Single(f64::NAN);
        assert_eq!(refused(&value).0, "/kind/Single");

        assert_eq!(refused(&f64::NAN).0, "");
    }

    #[test]
    fn the_serde_json_error_of_encode_names_the_problem() {
        let mut value = reading();
        value.celsius = f64::NEG_INFINITY;
        let error = RawJson::encode(&value).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot encode -infinity at `/celsius`: JSON has no NaN or infinity, and serde_json would store null, which could not be read back as a number"
        );
    }

    #[test]
    fn other_serialization_errors_stay_serde_json_errors() {
        let map = BTreeMap::from([((1, 2), "pair keys are not strings")]);
        let error = RawJson::try_encode(&map).unwrap_err();
        assert!(matches!(error, EncodeError::Json(_)), "{error:?}");
        assert!(
            error.to_string().starts_with("failed to encode as JSON: "),
            "{error}"
        );
    }
}
