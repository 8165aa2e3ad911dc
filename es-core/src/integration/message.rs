//! A stored event as a broker [`Message`] and back: the subject from [`subject`], the payload
//! bytes unchanged, and every [`headers`] field.
//!
//! ```
//! use es_core::integration::{headers, Message};
//! use es_core::{Position, RawJson, RecordedEvent};
//!
//! let event = RecordedEvent {
//!     tenant: "acme".into(),
//!     stream_type: "order".into(),
//!     stream_id: "o-1".into(),
//!     stream_version: 1,
//!     position: Position { transaction: 7, sequence: 7 },
//!     event_id: uuid::Uuid::new_v4(),
//!     event_type: "OrderPlaced".into(),
//!     schema_version: 2,
//!     payload: RawJson::from_string(r#"{"total_cents":1250}"#),
//!     metadata: RawJson::from_string(r#"{"correlation_id":"req-1"}"#),
//!     recorded_at: chrono::Utc::now(),
//! };
//! let message = Message::from_event("es", &event);
//! assert_eq!(message.subject, "es.order.OrderPlaced");
//! assert_eq!(message.payload, br#"{"total_cents":1250}"#);
//! assert_eq!(message.header(headers::CORRELATION_ID), Some("req-1"));
//!
//! let back = message.to_event()?;
//! assert_eq!((back.event_id, back.position), (event.event_id, event.position));
//! # Ok::<(), es_core::integration::MessageError>(())
//! ```
//!
//! Header values that are free text (tenant, stream type and id, event type, correlation and
//! causation ids) are percent-encoded outside printable ASCII ([`encode_header_value`]): a NATS
//! header value cannot hold a line break, and leading or trailing spaces do not survive every
//! client.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::IgnoredAny;
use uuid::Uuid;

use super::broker::Message;
use super::{headers, subject};
use crate::contract::{self, Field};
use crate::envelope::{Metadata, Position, RecordedEvent};
use crate::json::RawJson;
use crate::stream::{DEFAULT_TENANT, shown};

/// Why a [`Message`] is not a published event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A header every published event carries is absent.
    #[error("message lacks the `{name}` header")]
    MissingHeader {
        /// The header's name.
        name: &'static str,
    },
    /// A header's value cannot be what the header means (or the header appears twice).
    #[error("message header `{name}` is invalid: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// Why, quoting at most the first 64 characters of the value.
        reason: String,
    },
    /// The payload is not JSON text (or not UTF-8).
    #[error("message payload is not JSON: {}", json_error(source))]
    PayloadNotJson {
        /// What the JSON parser reported (a position, never the payload).
        source: serde_json::Error,
    },
}

impl Message {
    /// The message a relay publishes for `event`: subject `<prefix>.<stream type>.<event type>`
    /// ([`subject`]), the stored payload bytes unchanged, and the [`headers`]: the event id as
    /// both [`headers::MSG_ID`] and [`headers::EVENT_ID`], the stream, position, event type and
    /// schema version, the correlation and causation ids when the metadata holds them, when it
    /// was recorded and the content type.
    ///
    /// Metadata that does not parse only leaves the correlation and causation ids out: the
    /// event itself is published.
    pub fn from_event(prefix: &str, event: &RecordedEvent) -> Message {
        // Only the two ids travel as headers: read just them (a `Metadata` would also collect
        // every other field).
        #[derive(Default, serde::Deserialize)]
        struct Ids {
            #[serde(default)]
            correlation_id: Option<String>,
            #[serde(default)]
            causation_id: Option<String>,
        }
        let metadata: Ids = event.metadata.decode().unwrap_or_default();
        let event_id = event.event_id.to_string();
        let mut headers: Vec<(String, String)> = Vec::with_capacity(headers::ALL.len());
        let mut add = |name: &str, value: String| headers.push((name.to_owned(), value));
        add(headers::MSG_ID, event_id.clone());
        add(headers::EVENT_ID, event_id);
        add(
            headers::TENANT,
            encode_header_value(&event.tenant).into_owned(),
        );
        add(
            headers::STREAM_TYPE,
            encode_header_value(&event.stream_type).into_owned(),
        );
        add(
            headers::STREAM_ID,
            encode_header_value(&event.stream_id).into_owned(),
        );
        add(headers::STREAM_VERSION, event.stream_version.to_string());
        add(headers::POSITION, event.position.to_string());
        add(
            headers::EVENT_TYPE,
            encode_header_value(&event.event_type).into_owned(),
        );
        add(headers::SCHEMA_VERSION, event.schema_version.to_string());
        if let Some(correlation_id) = &metadata.correlation_id {
            add(
                headers::CORRELATION_ID,
                encode_header_value(correlation_id).into_owned(),
            );
        }
        if let Some(causation_id) = &metadata.causation_id {
            add(
                headers::CAUSATION_ID,
                encode_header_value(causation_id).into_owned(),
            );
        }
        add(
            headers::RECORDED_AT,
            event
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        );
        add(headers::CONTENT_TYPE, headers::CONTENT_TYPE_JSON.to_owned());
        Message {
            subject: subject(prefix, &event.stream_type, &event.event_type),
            headers,
            payload: event.payload.as_str().as_bytes().to_vec(),
        }
    }

    /// The event a published message carries, as a consumer sees it: everything from the
    /// headers and the payload, the metadata rebuilt from the correlation and causation ids.
    /// The event id is [`headers::EVENT_ID`] ([`headers::MSG_ID`] may differ after a re-drive).
    /// A message without [`headers::TENANT`] belongs to [`DEFAULT_TENANT`].
    ///
    /// Every header is checked (a header of [`headers::ALL`] may appear once; names and ids
    /// follow the input contract of [`crate::contract`]) and so is the payload (JSON text);
    /// nothing panics whatever the message holds.
    pub fn to_event(&self) -> Result<RecordedEvent, MessageError> {
        for name in headers::ALL {
            if self.headers.iter().filter(|(key, _)| key == name).count() > 1 {
                return Err(MessageError::InvalidHeader {
                    name,
                    reason: "it appears more than once".to_owned(),
                });
            }
        }
        let event_id = required(self, headers::EVENT_ID)?;
        let event_id = Uuid::parse_str(event_id).map_err(|_| MessageError::InvalidHeader {
            name: headers::EVENT_ID,
            reason: format!("`{}` is not a UUID", shown(event_id)),
        })?;
        let tenant = match self.header(headers::TENANT) {
            Some(_) => text(self, headers::TENANT, |value| {
                contract::check_name(Field::Tenant, value)
            })?,
            None => DEFAULT_TENANT.to_owned(),
        };
        let stream_type = text(self, headers::STREAM_TYPE, |value| {
            contract::check_name(Field::StreamType, value)
        })?;
        let stream_id = text(self, headers::STREAM_ID, contract::check_stream_id)?;
        let stream_version: u64 = number(self, headers::STREAM_VERSION)?;
        if stream_version == 0 {
            return Err(MessageError::InvalidHeader {
                name: headers::STREAM_VERSION,
                reason: "stream versions start at 1".to_owned(),
            });
        }
        let position = required(self, headers::POSITION)?;
        let position: Position = position.parse().map_err(|error: crate::InvalidPosition| {
            MessageError::InvalidHeader {
                name: headers::POSITION,
                reason: error.to_string(),
            }
        })?;
        let event_type = text(self, headers::EVENT_TYPE, |value| {
            contract::check_name(Field::EventType(event_id), value)
        })?;
        let schema_version: u32 = number(self, headers::SCHEMA_VERSION)?;
        let recorded_at = required(self, headers::RECORDED_AT)?;
        let recorded_at = DateTime::parse_from_rfc3339(recorded_at)
            .map_err(|error| MessageError::InvalidHeader {
                name: headers::RECORDED_AT,
                reason: format!("`{}` is not an RFC 3339 time: {error}", shown(recorded_at)),
            })?
            .with_timezone(&Utc);
        let content_type = required(self, headers::CONTENT_TYPE)?;
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(headers::CONTENT_TYPE_JSON) {
            return Err(MessageError::InvalidHeader {
                name: headers::CONTENT_TYPE,
                reason: format!(
                    "`{}` is not `{}`",
                    shown(content_type),
                    headers::CONTENT_TYPE_JSON
                ),
            });
        }
        let metadata = Metadata {
            correlation_id: optional_text(self, headers::CORRELATION_ID)?,
            causation_id: optional_text(self, headers::CAUSATION_ID)?,
            ..Metadata::default()
        };
        serde_json::from_slice::<IgnoredAny>(&self.payload)
            .map_err(|source| MessageError::PayloadNotJson { source })?;
        // Valid JSON is valid UTF-8: serde_json checks strings, and the rest is ASCII.
        let payload =
            String::from_utf8(self.payload.clone()).map_err(|_| MessageError::PayloadNotJson {
                source: serde::de::Error::custom("the payload is not UTF-8"),
            })?;
        let metadata = RawJson::try_encode(&metadata).map_err(|_| MessageError::InvalidHeader {
            name: headers::CORRELATION_ID,
            reason: "the correlation or causation id cannot be encoded as JSON".to_owned(),
        })?;
        Ok(RecordedEvent {
            tenant,
            stream_type,
            stream_id,
            stream_version,
            position,
            event_id,
            event_type,
            schema_version,
            payload: RawJson::from_string(payload),
            metadata,
            recorded_at,
        })
    }
}

/// A serde_json error as a message may show it: serde's data errors quote the offending value
/// (`invalid type: string "..."`), which comes from a payload, so only their place is shown;
/// a missing field names the field, from the schema, and is shown whole.
pub(crate) fn json_error(error: &serde_json::Error) -> impl std::fmt::Display + '_ {
    struct Shown<'e>(&'e serde_json::Error);
    impl std::fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let error = self.0;
            let text = error.to_string();
            match error.classify() {
                serde_json::error::Category::Data if !text.starts_with("missing field") => {
                    write!(
                        f,
                        "a value does not match its type at line {} column {}",
                        error.line(),
                        error.column()
                    )
                }
                _ => f.write_str(&text),
            }
        }
    }
    Shown(error)
}

/// A decoding error as a message may show it: see [`json_error`].
pub(crate) fn decode_error(error: &crate::DecodeError) -> impl std::fmt::Display + '_ {
    struct Shown<'e>(&'e crate::DecodeError);
    impl std::fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                crate::DecodeError::InvalidPayload {
                    event_type,
                    version,
                    source,
                } => write!(
                    f,
                    "invalid payload for event `{}` version {version}: {}",
                    shown(event_type),
                    json_error(source)
                ),
                other => write!(f, "{other}"),
            }
        }
    }
    Shown(error)
}

fn required<'m>(message: &'m Message, name: &'static str) -> Result<&'m str, MessageError> {
    message
        .header(name)
        .ok_or(MessageError::MissingHeader { name })
}

/// A free-text header, percent-decoded and checked against the input contract.
fn text(
    message: &Message,
    name: &'static str,
    check: impl Fn(&str) -> Result<(), contract::InputRule>,
) -> Result<String, MessageError> {
    let value = decoded(name, required(message, name)?)?;
    check(&value).map_err(|rule| MessageError::InvalidHeader {
        name,
        reason: rule.to_string(),
    })?;
    Ok(value)
}

fn optional_text(message: &Message, name: &'static str) -> Result<Option<String>, MessageError> {
    message
        .header(name)
        .map(|value| decoded(name, value))
        .transpose()
}

fn decoded(name: &'static str, value: &str) -> Result<String, MessageError> {
    decode_header_value(value)
        .map(Cow::into_owned)
        .map_err(|reason| MessageError::InvalidHeader { name, reason })
}

fn number<T: std::str::FromStr>(message: &Message, name: &'static str) -> Result<T, MessageError> {
    let value = required(message, name)?;
    // `u64::from_str` accepts a leading `+`; a header written by a relay never has one.
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(MessageError::InvalidHeader {
            name,
            reason: format!("`{}` is not a decimal number", shown(value)),
        });
    }
    value.parse().map_err(|_| MessageError::InvalidHeader {
        name,
        reason: format!("`{}` is out of range", shown(value)),
    })
}

/// A header value for free text: every byte outside printable ASCII (`!` to `~`), and `%`
/// itself, becomes `%XX` (upper-case hex of the UTF-8 byte). Text of plain ASCII without
/// spaces is returned as it is.
///
/// ```
/// use es_core::integration::{decode_header_value, encode_header_value};
///
/// assert_eq!(encode_header_value("order-7"), "order-7");
/// assert_eq!(encode_header_value("a b\nc%"), "a%20b%0Ac%25");
/// assert_eq!(decode_header_value("a%20b%0Ac%25").unwrap(), "a b\nc%");
/// ```
pub fn encode_header_value(value: &str) -> Cow<'_, str> {
    let plain = |byte: u8| byte.is_ascii_graphic() && byte != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    let mut encoded = String::with_capacity(value.len() + 8);
    for byte in value.bytes() {
        if plain(byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    Cow::Owned(encoded)
}

/// Reverses [`encode_header_value`]; why not, when `value` holds a `%` without two hex digits
/// after it or decodes to bytes that are not UTF-8.
pub fn decode_header_value(value: &str) -> Result<Cow<'_, str>, String> {
    if !value.contains('%') {
        return Ok(Cow::Borrowed(value));
    }
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes
                .get(index + 1..index + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "`{}` has a `%` at byte {index} without two hex digits after it",
                        shown(value)
                    )
                })?;
            decoded.push(hex);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| format!("`{}` decodes to bytes that are not UTF-8", shown(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RecordedEvent {
        RecordedEvent {
            tenant: "acme".into(),
            stream_type: "order".into(),
            stream_id: "o-1".into(),
            stream_version: 3,
            position: Position {
                transaction: 12,
                sequence: 40,
            },
            event_id: Uuid::new_v4(),
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            payload: RawJson::from_string(r#"{"total_cents":1250,"note":"café"}"#),
            metadata: RawJson::from_string(
                r#"{"correlation_id":"req 7\nx","causation_id":"cmd-1","actor_id":"u"}"#,
            ),
            recorded_at: DateTime::parse_from_rfc3339("2026-03-01T10:20:30.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    fn without(message: &Message, name: &str) -> Message {
        let mut message = message.clone();
        message.headers.retain(|(key, _)| key != name);
        message
    }

    fn with(message: &Message, name: &str, value: &str) -> Message {
        let mut message = without(message, name);
        message.headers.push((name.to_owned(), value.to_owned()));
        message
    }

    #[test]
    fn a_message_carries_every_header_and_the_payload_unchanged() {
        let event = event();
        let message = Message::from_event("acme.es", &event);
        assert_eq!(message.subject, "acme.es.order.OrderPlaced");
        assert_eq!(message.payload, event.payload.as_str().as_bytes());
        let id = event.event_id.to_string();
        for (name, value) in [
            (headers::MSG_ID, id.as_str()),
            (headers::EVENT_ID, id.as_str()),
            (headers::TENANT, "acme"),
            (headers::STREAM_TYPE, "order"),
            (headers::STREAM_ID, "o-1"),
            (headers::STREAM_VERSION, "3"),
            (headers::POSITION, "12/40"),
            (headers::EVENT_TYPE, "OrderPlaced"),
            (headers::SCHEMA_VERSION, "2"),
            (headers::CORRELATION_ID, "req%207%0Ax"),
            (headers::CAUSATION_ID, "cmd-1"),
            (headers::RECORDED_AT, "2026-03-01T10:20:30.123456Z"),
            (headers::CONTENT_TYPE, "application/json"),
        ] {
            assert_eq!(message.header(name), Some(value), "{name}");
        }
        assert_eq!(message.headers.len(), headers::ALL.len());
        assert!(
            message
                .headers
                .iter()
                .all(|(_, value)| { value.bytes().all(|byte| byte.is_ascii_graphic()) })
        );
    }

    #[test]
    fn a_message_reads_back_as_the_event_with_its_correlation_and_causation() {
        let event = event();
        let back = Message::from_event("es", &event).to_event().unwrap();
        let metadata = back.metadata().unwrap();
        assert_eq!(metadata.correlation_id.as_deref(), Some("req 7\nx"));
        assert_eq!(metadata.causation_id.as_deref(), Some("cmd-1"));
        assert_eq!(metadata.actor_id, None, "only what the headers carry");
        assert_eq!(
            RecordedEvent {
                metadata: event.metadata.clone(),
                ..back
            },
            event
        );
    }

    #[test]
    fn names_and_ids_with_any_characters_round_trip() {
        let mut event = event();
        event.tenant = " lead and trail ".into();
        event.stream_id = "a.b*c >d\r\n%41 ü 💡".into();
        event.event_type = "Placed%".into();
        event.metadata = RawJson::empty_object();
        let message = Message::from_event("es", &event);
        assert_eq!(message.header(headers::CORRELATION_ID), None);
        let back = message.to_event().unwrap();
        assert_eq!(back.tenant, event.tenant);
        assert_eq!(back.stream_id, event.stream_id);
        assert_eq!(back.event_type, event.event_type);
        assert_eq!(back.metadata().unwrap(), Metadata::default());
    }

    #[test]
    fn a_message_without_a_tenant_belongs_to_the_default_tenant() {
        let message = without(&Message::from_event("es", &event()), headers::TENANT);
        assert_eq!(message.to_event().unwrap().tenant, DEFAULT_TENANT);
    }

    #[test]
    fn missing_headers_are_named() {
        let message = Message::from_event("es", &event());
        for name in [
            headers::EVENT_ID,
            headers::STREAM_TYPE,
            headers::STREAM_ID,
            headers::STREAM_VERSION,
            headers::POSITION,
            headers::EVENT_TYPE,
            headers::SCHEMA_VERSION,
            headers::RECORDED_AT,
            headers::CONTENT_TYPE,
        ] {
            match without(&message, name).to_event() {
                Err(MessageError::MissingHeader { name: missing }) => assert_eq!(missing, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn hostile_headers_are_invalid_with_a_short_reason() {
        let message = Message::from_event("es", &event());
        let long = "9".repeat(100_000);
        for (name, value) in [
            (headers::EVENT_ID, "not-a-uuid"),
            (headers::EVENT_ID, long.as_str()),
            (headers::STREAM_VERSION, "0"),
            (headers::STREAM_VERSION, "-1"),
            (headers::STREAM_VERSION, "+3"),
            (headers::STREAM_VERSION, ""),
            (headers::STREAM_VERSION, long.as_str()),
            (headers::SCHEMA_VERSION, "4294967296"),
            (headers::POSITION, "12"),
            (headers::POSITION, "a/b"),
            (headers::RECORDED_AT, "yesterday"),
            (headers::CONTENT_TYPE, "text/plain"),
            (headers::TENANT, ""),
            (headers::TENANT, "%00"),
            (headers::STREAM_TYPE, "%zz"),
            (headers::STREAM_ID, "%"),
            (headers::STREAM_ID, "%C3%28"),
            (headers::EVENT_TYPE, &"x".repeat(300)),
            (headers::CORRELATION_ID, "%F0%9F"),
        ] {
            match with(&message, name, value).to_event() {
                Err(error @ MessageError::InvalidHeader { name: invalid, .. }) => {
                    assert_eq!(invalid, name, "{value:.40}");
                    assert!(error.to_string().len() < 300, "{error}");
                }
                other => panic!("{name} = {value:.40}: {other:?}"),
            }
        }
        let mut twice = message.clone();
        twice
            .headers
            .push((headers::TENANT.to_owned(), "other".to_owned()));
        assert!(matches!(
            twice.to_event(),
            Err(MessageError::InvalidHeader { name, .. }) if name == headers::TENANT
        ));
    }

    #[test]
    fn payloads_that_are_not_json_are_refused_without_quoting_them() {
        let message = Message::from_event("es", &event());
        for payload in [
            b"".to_vec(),
            b"{\"secret\": ".to_vec(),
            vec![0xff, 0xfe, b'{', b'}'],
            b"{\"a\":\"\xc3\x28\"}".to_vec(),
            b"{} trailing".to_vec(),
        ] {
            let error = Message {
                payload,
                ..message.clone()
            }
            .to_event()
            .unwrap_err();
            assert!(
                matches!(error, MessageError::PayloadNotJson { .. }),
                "{error}"
            );
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn header_values_round_trip_through_percent_encoding() {
        for text in ["", "plain", "a b", "%", "%25", "\u{0}\u{7f}é💡", " x "] {
            let encoded = encode_header_value(text);
            assert!(encoded.bytes().all(|byte| byte.is_ascii_graphic()));
            assert_eq!(decode_header_value(&encoded).unwrap(), text);
        }
        assert!(decode_header_value("%4").is_err());
        assert!(decode_header_value("%é1").is_err());
    }

    /// Messages mangled at random (headers dropped, duplicated, replaced by random text or
    /// bytes; payloads cut or replaced) are read without a panic; what reads back as an event
    /// is published again as the same message.
    #[test]
    fn mangled_messages_never_panic() {
        let mut rng = fastrand::Rng::new();
        let alphabet: Vec<char> = "%0123456789abcdefABCDEF/-:.+ \n\u{0}é💡\"{}[]"
            .chars()
            .collect();
        let random_text = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..24))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        let original = Message::from_event("es", &event());
        for _ in 0..5000 {
            let mut message = original.clone();
            for _ in 0..rng.usize(1..4) {
                match rng.u8(0..6) {
                    0 if !message.headers.is_empty() => {
                        let index = rng.usize(..message.headers.len());
                        message.headers.remove(index);
                    }
                    1 if !message.headers.is_empty() => {
                        let index = rng.usize(..message.headers.len());
                        message.headers[index].1 = random_text(&mut rng);
                    }
                    2 if !message.headers.is_empty() => {
                        let index = rng.usize(..message.headers.len());
                        let copy = message.headers[index].clone();
                        message.headers.push(copy);
                    }
                    3 => {
                        let cut = rng.usize(..=message.payload.len());
                        message.payload.truncate(cut);
                    }
                    4 => {
                        message.payload = (0..rng.usize(0..16)).map(|_| rng.u8(..)).collect();
                    }
                    _ => {
                        let name = headers::ALL[rng.usize(..headers::ALL.len())];
                        message.headers.retain(|(key, _)| key != name);
                        message
                            .headers
                            .push((name.to_owned(), random_text(&mut rng)));
                    }
                }
            }
            if let Ok(event) = message.to_event() {
                let again = Message::from_event("es", &event).to_event();
                assert!(
                    again.as_ref().is_ok_and(|again| *again == event),
                    "{message:?} read as {event:?}, then {again:?}"
                );
            }
        }
    }
}
