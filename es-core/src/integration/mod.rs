//! Integration events: the events of a service's log published to a broker, and consumed by
//! other services.
//!
//! - The event log is the outbox: a [`Relay`] reads the global log from its checkpoint and
//!   publishes each event (or the integration event a typed mapping makes of it) as a
//!   [`Message`] ([`Message::from_event`]), at least once and in order, with pipelined
//!   acknowledgements.
//! - A [`Consumer`] handles a [`Subscription`]'s deliveries with a
//!   [`Projection`](crate::projection::Projection): the event is decoded (and upcast), the
//!   handler's writes commit with an inbox entry ([`InboxStore`]) so that a redelivered event
//!   changes nothing, failures are retried with backoff and then dead-lettered
//!   ([`DeadLetterQueue`]), bad messages are dead-lettered at once.
//! - The broker is behind a small interface ([`Publisher`], [`Subscription`], [`Delivery`],
//!   [`DeadLetterQueue`]): NATS JetStream in crate `es-nats`, and [`MemoryBus`] in memory for
//!   tests.
//!
//! Below: what a relay and its consumers agree on, the subject an event is published to and the
//! headers it carries. The AsyncAPI document ([`crate::asyncapi`]) describes exactly these, and
//! a NATS JetStream relay uses the same function and constants.
//!
//! ```
//! use es_core::integration::{headers, subject};
//!
//! assert_eq!(subject("es", "order", "OrderCreated"), "es.order.OrderCreated");
//! // Ids and names may hold what a subject token cannot: they are percent-encoded.
//! assert_eq!(subject("es", "a.b*c >d", "Placed"), "es.a%2Eb%2Ac%20%3Ed.Placed");
//! assert_eq!(headers::EVENT_TYPE, "Es-Event-Type");
//! ```

mod broker;
mod bus;
mod consumer;
mod inbox;
mod message;
mod relay;

pub use broker::{
    BrokerError, DeadLetterQueue, DeadLetteredMessage, Delivery, Message, Publisher, Subscription,
};
pub use bus::{
    DEFAULT_ACK_WAIT, DEFAULT_DUPLICATE_WINDOW, MemoryBus, MemoryDelivery, MemorySubscription,
};
pub use consumer::{BadMessage, Consumer, ConsumerError, DeadLetterReason, Outcome};
pub use inbox::InboxStore;
pub use message::{MessageError, decode_header_value, encode_header_value};
pub use relay::{Relay, RelayError, RelayLag, RelaySummary, integration_event_id};

use std::borrow::Cow;
use std::fmt::Write as _;

/// The header names of a published event. The payload is the stored JSON payload, unchanged.
pub mod headers {
    /// The message id, the event id when a relay publishes: JetStream drops a second message
    /// with the same id within its duplicate window, so a relay that publishes an event twice
    /// after a crash delivers it once. A re-drive publishes with a new one.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The event id again, never changed: what a consumer's inbox recognises an event by, also
    /// when a re-drive publishes it again under a new [`MSG_ID`].
    pub const EVENT_ID: &str = "Es-Event-Id";
    /// The tenant the event belongs to (`default` for single-tenant stores; a message without
    /// it belongs to the default tenant).
    pub const TENANT: &str = "Es-Tenant";
    /// The stream type (aggregate name). This and the other free-text values (tenant, stream
    /// id, event type, correlation and causation ids) are percent-encoded outside printable
    /// ASCII: see [`encode_header_value`](super::encode_header_value).
    pub const STREAM_TYPE: &str = "Es-Stream-Type";
    /// The stream id.
    pub const STREAM_ID: &str = "Es-Stream-Id";
    /// The event's version in its stream, from 1.
    pub const STREAM_VERSION: &str = "Es-Stream-Version";
    /// The event's position in the global log, `transaction/sequence` (see
    /// [`Position`](crate::Position)'s `Display`).
    pub const POSITION: &str = "Es-Position";
    /// The stored event type name.
    pub const EVENT_TYPE: &str = "Es-Event-Type";
    /// The payload's schema version.
    pub const SCHEMA_VERSION: &str = "Es-Schema-Version";
    /// The correlation id of the request that caused the event, when known.
    pub const CORRELATION_ID: &str = "Es-Correlation-Id";
    /// The id of the command or event that caused the event, when known.
    pub const CAUSATION_ID: &str = "Es-Causation-Id";
    /// When the store recorded the event, RFC 3339 in UTC.
    pub const RECORDED_AT: &str = "Es-Recorded-At";
    /// The payload's media type, [`CONTENT_TYPE_JSON`].
    pub const CONTENT_TYPE: &str = "Content-Type";

    /// The media type of every payload.
    pub const CONTENT_TYPE_JSON: &str = "application/json";

    /// Every header, in the order above.
    pub const ALL: &[&str] = &[
        MSG_ID,
        EVENT_ID,
        TENANT,
        STREAM_TYPE,
        STREAM_ID,
        STREAM_VERSION,
        POSITION,
        EVENT_TYPE,
        SCHEMA_VERSION,
        CORRELATION_ID,
        CAUSATION_ID,
        RECORDED_AT,
        CONTENT_TYPE,
    ];
}

/// The subject an event is published to: `<prefix>.<stream_type>.<event_type>`.
///
/// `prefix` may hold several tokens (`"acme.es"`); each of its dot-separated tokens, the stream
/// type and the event type are encoded with [`encode_token`], so no name can add a token or a
/// wildcard. An empty prefix leaves it out. Consumers subscribe to `<prefix>.<stream_type>.>`
/// for a stream type, or to one event type's subject.
pub fn subject(prefix: &str, stream_type: &str, event_type: &str) -> String {
    let mut subject =
        String::with_capacity(prefix.len() + stream_type.len() + event_type.len() + 2);
    if !prefix.is_empty() {
        for token in prefix.split('.') {
            subject.push_str(&encode_token(token));
            subject.push('.');
        }
    }
    subject.push_str(&encode_token(stream_type));
    subject.push('.');
    subject.push_str(&encode_token(event_type));
    subject
}

/// One subject token: every byte outside `[A-Za-z0-9_-]` becomes `%XX` (uppercase hex of the
/// UTF-8 byte), so `.`, `*`, `>`, whitespace and `%` itself never reach NATS raw, and distinct
/// names stay distinct. An empty token becomes `%00`, since NATS has no empty tokens.
pub fn encode_token(token: &str) -> Cow<'_, str> {
    let plain = |byte: &u8| byte.is_ascii_alphanumeric() || *byte == b'_' || *byte == b'-';
    if !token.is_empty() && token.bytes().all(|byte| plain(&byte)) {
        return Cow::Borrowed(token);
    }
    if token.is_empty() {
        return Cow::Borrowed("%00");
    }
    let mut encoded = String::with_capacity(token.len() * 3);
    for byte in token.bytes() {
        if plain(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    Cow::Owned(encoded)
}

#[cfg(test)]
mod tests {
    use super::{encode_token, headers, subject};

    #[test]
    fn tokens_keep_letters_digits_underscore_and_dash_and_encode_every_other_byte() {
        assert_eq!(encode_token("order-42_B"), "order-42_B");
        assert_eq!(encode_token("a.b*c >d"), "a%2Eb%2Ac%20%3Ed");
        assert_eq!(encode_token("tab\there"), "tab%09here");
        assert_eq!(encode_token("50%"), "50%25");
        assert_eq!(encode_token("café"), "caf%C3%A9");
        assert_eq!(encode_token(""), "%00");
    }

    #[test]
    fn a_subject_is_prefix_stream_type_and_event_type() {
        assert_eq!(
            subject("es", "order", "OrderCreated"),
            "es.order.OrderCreated"
        );
        assert_eq!(
            subject("acme.es", "a.b*c >d", "Placed"),
            "acme.es.a%2Eb%2Ac%20%3Ed.Placed"
        );
        assert_eq!(subject("", "order", "Placed"), "order.Placed");
        // Three tokens after the prefix can never appear, whatever the names hold.
        assert_eq!(subject("es", "x.y", "z.>").split('.').count(), 3);
    }

    #[test]
    fn header_names_are_distinct_and_valid_nats_header_names() {
        let mut names = headers::ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), headers::ALL.len());
        assert!(headers::ALL.iter().all(|name| {
            name.bytes()
                .all(|byte| byte.is_ascii_graphic() && byte != b':')
        }));
    }
}
