//! The input contract: what every store accepts, checked in one place so that a value accepted by
//! one store is accepted by all, and a value refused by one is refused by all with the same
//! [`StoreError::InvalidInput`] naming the broken [`InputRule`].
//!
//! | input | rule |
//! |---|---|
//! | tenant, stream type, event type | 1 to [`MAX_NAME_BYTES`] bytes of UTF-8, no NUL character |
//! | stream id | 1 to [`MAX_STREAM_ID_BYTES`] bytes of UTF-8, no NUL character |
//! | batch | at least one event; each event id once |
//! | payload, snapshot state | JSON text without a `\u0000` escape or an unpaired surrogate escape (`\ud800`) |
//! | metadata | a JSON object, with the same escape rule |
//!
//! Why these: PostgreSQL text cannot hold NUL and its `jsonb` refuses `\u0000` and unpaired
//! surrogates; its key index refuses very long keys; a stream id of zero length names nothing.
//! SQLite and memory could store all of these, and then a repository on them could not load
//! what it stored. Messages quote at most 64 characters of an offending name, never a payload.

use std::fmt;

use serde::de::IgnoredAny;
use uuid::Uuid;

use crate::envelope::NewEvent;
use crate::store::StoreError;
use crate::stream::StreamKey;

/// The longest tenant, stream type or event type, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;

/// The longest stream id, in bytes of UTF-8.
pub const MAX_STREAM_ID_BYTES: usize = 1024;

/// Which input broke a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// The stream's tenant.
    Tenant,
    /// The stream's type.
    StreamType,
    /// The stream's id.
    StreamId,
    /// The type of the event with this id.
    EventType(Uuid),
    /// The payload of the event with this id.
    Payload(Uuid),
    /// The metadata of the event with this id.
    Metadata(Uuid),
    /// A snapshot's state.
    SnapshotState,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Tenant => f.write_str("the tenant"),
            Field::StreamType => f.write_str("the stream type"),
            Field::StreamId => f.write_str("the stream id"),
            Field::EventType(id) => write!(f, "the type of event {id}"),
            Field::Payload(id) => write!(f, "the payload of event {id}"),
            Field::Metadata(id) => write!(f, "the metadata of event {id}"),
            Field::SnapshotState => f.write_str("the snapshot state"),
        }
    }
}

/// A rule of the input contract, as broken by an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputRule {
    /// A name or id is empty.
    #[error("{field} is empty")]
    Empty {
        /// What is empty.
        field: Field,
    },
    /// A name or id is longer than allowed.
    #[error("{field} is {bytes} bytes long, more than the {max} allowed")]
    TooLong {
        /// What is too long.
        field: Field,
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A name or id holds a NUL character.
    #[error("{field} contains a NUL character")]
    NulCharacter {
        /// What holds it.
        field: Field,
    },
    /// The batch has no event.
    #[error("the batch is empty")]
    EmptyBatch,
    /// An event id appears twice in the batch.
    #[error("event id {event_id} appears twice in the batch")]
    RepeatedEventId {
        /// The id.
        event_id: Uuid,
    },
    /// A JSON value does not parse.
    #[error("{field} is not JSON")]
    NotJson {
        /// What does not parse.
        field: Field,
    },
    /// A JSON string holds `\u0000` or an unpaired surrogate escape.
    #[error(
        "{field} holds a `\\u0000` or unpaired surrogate escape in a string, which no store accepts"
    )]
    UnstorableEscape {
        /// What holds it.
        field: Field,
    },
    /// A JSON value that must be an object is not one.
    #[error("{field} is not a JSON object")]
    NotAnObject {
        /// What is not an object.
        field: Field,
    },
}

/// Checks an append against the contract: the stream's key, then the batch. Every store calls
/// it before anything else, so every store refuses the same appends the same way.
pub fn check_append(stream: StreamKey<'_>, events: &[NewEvent]) -> Result<(), StoreError> {
    check_stream(stream)?;
    check_batch(events).map_err(|rule| StoreError::InvalidInput {
        stream: stream.to_owned(),
        rule,
    })
}

/// Checks a stream's key: what every store checks before reading a stream or a snapshot, so a
/// key that can hold no events is an error rather than an empty stream.
pub fn check_stream(stream: StreamKey<'_>) -> Result<(), StoreError> {
    let invalid = |rule| StoreError::InvalidInput {
        stream: stream.to_owned(),
        rule,
    };
    check_name(Field::Tenant, stream.tenant).map_err(invalid)?;
    check_name(Field::StreamType, stream.stream_type).map_err(invalid)?;
    check_text(Field::StreamId, stream.id, MAX_STREAM_ID_BYTES).map_err(invalid)
}

/// Checks a snapshot's state (its key is checked by [`check_stream`]).
pub fn check_snapshot_state(stream: StreamKey<'_>, state: &str) -> Result<(), StoreError> {
    check_stream(stream)?;
    check_json(Field::SnapshotState, state, false).map_err(|rule| StoreError::InvalidInput {
        stream: stream.to_owned(),
        rule,
    })
}

fn check_batch(events: &[NewEvent]) -> Result<(), InputRule> {
    if events.is_empty() {
        return Err(InputRule::EmptyBatch);
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        if !seen.insert(event.event_id) {
            return Err(InputRule::RepeatedEventId {
                event_id: event.event_id,
            });
        }
        check_name(Field::EventType(event.event_id), &event.event_type)?;
        check_json(
            Field::Payload(event.event_id),
            event.payload.as_str(),
            false,
        )?;
        check_json(
            Field::Metadata(event.event_id),
            event.metadata.as_str(),
            true,
        )?;
    }
    Ok(())
}

/// A tenant, stream type or event type.
pub(crate) fn check_name(field: Field, name: &str) -> Result<(), InputRule> {
    check_text(field, name, MAX_NAME_BYTES)
}

/// A stream id.
pub(crate) fn check_stream_id(id: &str) -> Result<(), InputRule> {
    check_text(Field::StreamId, id, MAX_STREAM_ID_BYTES)
}

fn check_text(field: Field, text: &str, max: usize) -> Result<(), InputRule> {
    if text.is_empty() {
        Err(InputRule::Empty { field })
    } else if text.len() > max {
        Err(InputRule::TooLong {
            field,
            bytes: text.len(),
            max,
        })
    } else if text.contains('\0') {
        Err(InputRule::NulCharacter { field })
    } else {
        Ok(())
    }
}

fn check_json(field: Field, text: &str, object: bool) -> Result<(), InputRule> {
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        return Err(InputRule::NotJson { field });
    }
    if object && !text.trim_start().starts_with('{') {
        return Err(InputRule::NotAnObject { field });
    }
    if has_unstorable_escape(text) {
        return Err(InputRule::UnstorableEscape { field });
    }
    Ok(())
}

/// Whether valid JSON `text` holds a `\u0000` escape or a surrogate escape that is not part of a
/// pair. Backslashes only occur inside strings in valid JSON, so no string tracking is needed.
fn has_unstorable_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    // The high surrogate just read, waiting for its low half.
    let mut pending_high = false;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            if pending_high {
                return true;
            }
            i += 1;
            continue;
        }
        let escape = bytes.get(i + 1).copied();
        if escape != Some(b'u') {
            if pending_high {
                return true;
            }
            i += 2;
            continue;
        }
        let Some(code) = bytes
            .get(i + 2..i + 6)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
        else {
            // Not reachable for valid JSON; refuse rather than guess.
            return true;
        };
        match code {
            0 => return true,
            0xD800..=0xDBFF if pending_high => return true,
            0xD800..=0xDBFF => pending_high = true,
            0xDC00..=0xDFFF if pending_high => pending_high = false,
            0xDC00..=0xDFFF => return true,
            _ if pending_high => return true,
            _ => {}
        }
        i += 6;
    }
    pending_high
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::RawJson;

    fn event(payload: &str, metadata: &str) -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(7),
            event_type: "Tested".to_owned(),
            schema_version: 1,
            payload: RawJson::from_string(payload),
            metadata: RawJson::from_string(metadata),
        }
    }

    fn rule(result: Result<(), StoreError>) -> InputRule {
        match result {
            Err(StoreError::InvalidInput { rule, .. }) => rule,
            other => panic!("expected an invalid input, got {other:?}"),
        }
    }

    #[test]
    fn escapes_no_store_accepts() {
        for ok in [
            r#"{"a":"plain"}"#,
            r#"{"a":"\u00e9\n\\u0000"}"#,
            r#"{"a":"\ud83e\udd80"}"#,
            r#""\u0001""#,
            "[1,2,3]",
        ] {
            assert!(!has_unstorable_escape(ok), "{ok}");
        }
        for bad in [
            r#"{"a":"\u0000"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\ud800x"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800\ud800"}"#,
            r#"{"a":"\ud800\n"}"#,
        ] {
            assert!(has_unstorable_escape(bad), "{bad}");
        }
    }

    #[test]
    fn batches_break_named_rules() {
        let key = StreamKey::new("t", "s");
        let ok = event("{}", "{}");
        assert!(check_append(key, std::slice::from_ref(&ok)).is_ok());
        assert_eq!(rule(check_append(key, &[])), InputRule::EmptyBatch);
        assert!(matches!(
            rule(check_append(key, &[ok.clone(), ok.clone()])),
            InputRule::RepeatedEventId { .. }
        ));
        assert!(matches!(
            rule(check_append(key, &[event("{", "{}")])),
            InputRule::NotJson {
                field: Field::Payload(_)
            }
        ));
        assert!(matches!(
            rule(check_append(key, &[event("{}", "[]")])),
            InputRule::NotAnObject {
                field: Field::Metadata(_)
            }
        ));
        assert!(matches!(
            rule(check_append(key, &[event(r#""\ud800""#, "{}")])),
            InputRule::UnstorableEscape {
                field: Field::Payload(_)
            }
        ));
        let mut unnamed = ok.clone();
        unnamed.event_type.clear();
        assert!(matches!(
            rule(check_append(key, &[unnamed])),
            InputRule::Empty {
                field: Field::EventType(_)
            }
        ));
    }

    #[test]
    fn keys_break_named_rules_without_quoting_the_value() {
        let long = "x".repeat(10_000);
        let error = check_stream(StreamKey::new("t", &long)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("10000 bytes long, more than the 1024 allowed"),
            "{message}"
        );
        assert!(message.len() < 300, "{message}");
        assert_eq!(
            rule(check_stream(StreamKey::new("t", ""))),
            InputRule::Empty {
                field: Field::StreamId
            }
        );
        assert_eq!(
            rule(check_stream(StreamKey::new("t\0", "s"))),
            InputRule::NulCharacter {
                field: Field::StreamType
            }
        );
        assert_eq!(
            rule(check_stream(StreamKey::new("t", "s").in_tenant(""))),
            InputRule::Empty {
                field: Field::Tenant
            }
        );
        assert!(check_stream(StreamKey::new("t", &"x".repeat(1024))).is_ok());
    }
}
