//! [`JetStreamDeadLetters`]: es-core's [`DeadLetterQueue`] on a JetStream stream of its own.

use std::str::FromStr;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use es_core::integration::{
    BrokerError, DeadLetterQueue, DeadLetteredMessage, Message, encode_token, headers,
};

use crate::error::{NatsError, rejected, unavailable};
use crate::headers::{from_header_map, to_header_map};
use crate::stream::{StreamSettings, ensure_stream, prefix_filter, stream_name_for};

/// The headers of a dead letter. Its payload is the original payload, unchanged.
pub mod dead_letter_headers {
    /// The consumer that gave up.
    pub const CONSUMER: &str = "Es-Dlq-Consumer";
    /// The last error, on one line.
    pub const ERROR: &str = "Es-Dlq-Error";
    /// How many deliveries were tried.
    pub const ATTEMPTS: &str = "Es-Dlq-Attempts";
    /// When the consumer gave up, RFC 3339 in UTC.
    pub const FAILED_AT: &str = "Es-Dlq-Failed-At";
    /// The subject the original message was published to.
    pub const SUBJECT: &str = "Es-Dlq-Subject";
    /// The original headers, in their order, as a JSON array of `[name, value]` pairs.
    pub const HEADERS: &str = "Es-Dlq-Headers";
}

/// The longest error kept in a dead letter, in bytes.
const MAX_ERROR_LEN: usize = 2_048;

/// A dead-letter queue on a JetStream stream: the letters of consumer `c` are messages on
/// subject `<prefix>.<c>` (the consumer's name encoded as a subject token), their headers
/// carrying the error, the attempts, the time, the consumer and the original subject and
/// headers ([`dead_letter_headers`]), their payload the original bytes.
///
/// [`list`](DeadLetterQueue::list) reads a consumer's letters oldest first;
/// [`redrive`](DeadLetterQueue::redrive) publishes the original message to its original subject
/// with a new `Nats-Msg-Id` (`<event id>.redrive.<dead-letter sequence>`, so the events stream
/// does not drop it as a duplicate of the first delivery, while a second redrive of the same
/// letter is dropped) keeping `Es-Event-Id` (so the consumer's inbox still recognises the event),
/// then deletes the letter.
#[derive(Debug, Clone)]
pub struct JetStreamDeadLetters {
    jetstream: jetstream::Context,
    stream: String,
    prefix: String,
}

impl JetStreamDeadLetters {
    /// Creates (or updates) the dead-letter stream for `prefix` (stream settings from
    /// [`StreamSettings::for_prefix`]: file storage, kept until re-driven) and returns the queue.
    pub async fn open(jetstream: &jetstream::Context, prefix: &str) -> Result<Self, NatsError> {
        Self::open_with(jetstream, prefix, StreamSettings::for_prefix(prefix)).await
    }

    /// Like [`open`](Self::open) with the stream's settings given; their subjects must include
    /// `<prefix>.>`.
    pub async fn open_with(
        jetstream: &jetstream::Context,
        prefix: &str,
        settings: StreamSettings,
    ) -> Result<Self, NatsError> {
        ensure_stream(jetstream, &settings).await?;
        Ok(Self {
            jetstream: jetstream.clone(),
            stream: settings.name,
            prefix: prefix.to_owned(),
        })
    }

    /// The dead-letter stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The subject of `consumer`'s dead letters.
    pub fn subject_of(&self, consumer: &str) -> String {
        let filter = prefix_filter(&self.prefix);
        let base = filter.trim_end_matches('>');
        format!("{base}{}", encode_token(consumer))
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, BrokerError> {
        self.jetstream
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|error| {
                unavailable(
                    format!("opening dead-letter stream `{}`", self.stream),
                    error,
                )
            })
    }
}

/// The default stream name of a dead-letter prefix.
pub fn dead_letter_stream_name(prefix: &str) -> String {
    stream_name_for(prefix)
}

/// One line of at most [`MAX_ERROR_LEN`] bytes.
fn one_line(error: &str) -> String {
    let mut line: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

// A dead letter carries no `Nats-Msg-Id`: NATS servers before 2.10 look a header up by its
// first occurrence in the header block, which may be inside the JSON of the original headers
// (holding the original `Nats-Msg-Id`), so deduplication cannot be relied on there. A send
// retried after a lost acknowledgement may store a letter twice; re-driving both delivers the
// event twice, which the consumer's inbox absorbs.
impl DeadLetterQueue for JetStreamDeadLetters {
    async fn send(&self, letter: &DeadLetteredMessage) -> Result<(), BrokerError> {
        let original_headers = serde_json::to_string(&letter.message.headers)
            .map_err(|error| rejected(format!("encoding the headers of a dead letter: {error}")))?;
        let failed_at = letter.failed_at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        let list = vec![
            (
                dead_letter_headers::CONSUMER.to_owned(),
                one_line(&letter.consumer),
            ),
            (
                dead_letter_headers::ERROR.to_owned(),
                one_line(&letter.error),
            ),
            (
                dead_letter_headers::ATTEMPTS.to_owned(),
                letter.attempts.to_string(),
            ),
            (dead_letter_headers::FAILED_AT.to_owned(), failed_at),
            (
                dead_letter_headers::SUBJECT.to_owned(),
                one_line(&letter.message.subject),
            ),
            (dead_letter_headers::HEADERS.to_owned(), original_headers),
        ];
        let subject = self.subject_of(&letter.consumer);
        let ack = self
            .jetstream
            .publish_with_headers(
                subject.clone(),
                to_header_map(&list)?,
                Bytes::from(letter.message.payload.clone()),
            )
            .await
            .map_err(|error| unavailable(format!("dead-lettering to `{subject}`"), error))?;
        ack.await.map_err(|error| match error.kind() {
            PublishErrorKind::StreamNotFound => rejected(format!(
                "dead-lettering to `{subject}`: no jetstream stream stores this subject"
            )),
            PublishErrorKind::MaxPayloadExceeded => rejected(format!(
                "dead-lettering to `{subject}`: the letter exceeds the server's max payload"
            )),
            _ => unavailable(format!("dead-lettering to `{subject}`"), error),
        })?;
        Ok(())
    }

    async fn list(&self, consumer: &str) -> Result<Vec<DeadLetteredMessage>, BrokerError> {
        let subject = self.subject_of(consumer);
        let stream = self.stream().await?;
        let mut letters = Vec::new();
        let mut sequence = 1;
        loop {
            match stream
                .get_first_raw_message_by_subject(&subject, sequence)
                .await
            {
                Ok(message) => {
                    sequence = message.sequence + 1;
                    letters.push(parse_letter(message));
                }
                Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(error) => {
                    return Err(unavailable(
                        format!("reading dead letters of `{subject}` from {sequence} on"),
                        error,
                    ));
                }
            }
        }
        Ok(letters)
    }

    async fn redrive(&self, id: &str) -> Result<bool, BrokerError> {
        let Ok(sequence) = u64::from_str(id) else {
            return Ok(false);
        };
        let stream = self.stream().await?;
        let raw = match stream.get_raw_message(sequence).await {
            Ok(raw) => raw,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return Ok(false),
            Err(error) => {
                return Err(unavailable(
                    format!("reading dead letter {sequence}"),
                    error,
                ));
            }
        };
        let letter = parse_letter(raw);
        if letter.message.subject.is_empty() {
            return Err(rejected(format!(
                "re-driving dead letter {sequence}: it has no `{}` header",
                dead_letter_headers::SUBJECT
            )));
        }
        let mut message = letter.message;
        let event_id = message
            .header(headers::EVENT_ID)
            .or_else(|| message.header(headers::MSG_ID))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}.{sequence}", self.stream));
        message
            .headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(headers::MSG_ID));
        message.headers.insert(
            0,
            (
                headers::MSG_ID.to_owned(),
                format!("{event_id}.redrive.{sequence}"),
            ),
        );
        let subject = message.subject.clone();
        let ack = self
            .jetstream
            .publish_with_headers(
                subject.clone(),
                to_header_map(&message.headers)?,
                Bytes::from(message.payload),
            )
            .await
            .map_err(|error| {
                unavailable(
                    format!("re-driving dead letter {sequence} to `{subject}`"),
                    error,
                )
            })?;
        ack.await.map_err(|error| match error.kind() {
            PublishErrorKind::StreamNotFound => rejected(format!(
                "re-driving dead letter {sequence} to `{subject}`: no jetstream stream stores this subject"
            )),
            _ => unavailable(format!("re-driving dead letter {sequence} to `{subject}`"), error),
        })?;
        match stream.delete_message(sequence).await {
            Ok(_) => Ok(true),
            Err(error) => Err(unavailable(
                format!("deleting dead letter {sequence} after re-driving it"),
                error,
            )),
        }
    }
}

/// A dead letter read back. A letter missing some of its headers (published by hand) reads
/// with what it has: empty subject and consumer, zero attempts, the stream's time.
fn parse_letter(raw: StreamMessage) -> DeadLetteredMessage {
    let stored = from_header_map(Some(&raw.headers));
    let get = |name: &str| {
        stored
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    let original_headers: Vec<(String, String)> = get(dead_letter_headers::HEADERS)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    let stream_time: DateTime<Utc> = raw.time;
    DeadLetteredMessage {
        id: raw.sequence.to_string(),
        consumer: get(dead_letter_headers::CONSUMER)
            .unwrap_or_default()
            .to_owned(),
        message: Message {
            subject: get(dead_letter_headers::SUBJECT)
                .unwrap_or_default()
                .to_owned(),
            headers: original_headers,
            payload: raw.payload.to_vec(),
        },
        error: get(dead_letter_headers::ERROR)
            .unwrap_or_default()
            .to_owned(),
        attempts: get(dead_letter_headers::ATTEMPTS)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0),
        failed_at: get(dead_letter_headers::FAILED_AT)
            .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or(stream_time),
    }
}
