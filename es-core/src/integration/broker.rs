//! The small interface a broker implements so that the relay and the consumer loops run on it:
//! a [`Publisher`] with pipelined acknowledgements, a [`Subscription`] of [`Delivery`]s that are
//! acknowledged or retried, and a [`DeadLetterQueue`]. NATS JetStream (crate `es-nats`) and the
//! in-memory bus implement it; SNS/SQS can come next on the same loops.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A message as a broker carries it: a subject, headers and the payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it is published (a NATS subject; a topic or queue elsewhere).
    pub subject: String,
    /// Header names and values, in the order they were added.
    pub headers: Vec<(String, String)>,
    /// The payload: the stored JSON of an event.
    pub payload: Vec<u8>,
}

impl Message {
    /// The first value of a header, by exact name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker could not be reached or did not answer in time; trying again may succeed.
    #[error("broker unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The client's error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The broker refused the operation (no stream for the subject, a message too large...);
    /// trying again will fail the same way.
    #[error("broker refused: {message}")]
    Rejected {
        /// What the broker said.
        message: String,
    },
}

impl BrokerError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BrokerError::Unavailable { .. })
    }
}

/// Where a relay publishes.
pub trait Publisher: Send + Sync + 'static {
    /// The broker's acknowledgement of one message, awaited later: publishes are pipelined.
    type Ack: Future<Output = Result<(), BrokerError>> + Send;

    /// Hands `message` to the broker and returns without waiting for the acknowledgement;
    /// awaiting the returned [`Ack`](Self::Ack) waits for it. The broker drops a second
    /// message with the same [`headers::MSG_ID`](super::headers::MSG_ID) within its duplicate
    /// window.
    fn publish(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<Self::Ack, BrokerError>> + Send;
}

/// One delivery of a message to a consumer.
pub trait Delivery: Send {
    /// The message.
    fn message(&self) -> &Message;

    /// Which delivery of this message this is: 1 the first time, 2 after one retry...
    fn attempt(&self) -> u32;

    /// The message is done: it will not be delivered again.
    fn ack(self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The message failed: deliver it again after `delay`.
    fn retry_after(self, delay: Duration) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// A durable subscription: the broker remembers what was acknowledged across restarts.
pub trait Subscription: Send {
    /// What [`next`](Self::next) yields.
    type Delivery: Delivery;

    /// The next delivery, waiting at most `timeout`; `None` if none came.
    fn next(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Self::Delivery>, BrokerError>> + Send;

    /// How many messages wait for this subscription: not yet delivered, or delivered and not
    /// yet acknowledged. The consumer's lag.
    fn pending(&mut self) -> impl Future<Output = Result<u64, BrokerError>> + Send;
}

/// A message a consumer gave up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetteredMessage {
    /// The queue's id for it (the dead-letter stream's sequence on NATS), for
    /// [`DeadLetterQueue::redrive`]. Empty before it is stored.
    pub id: String,
    /// The consumer that gave up.
    pub consumer: String,
    /// The original message: subject, headers and payload, unchanged.
    pub message: Message,
    /// The last error, for a person to read.
    pub error: String,
    /// How many deliveries were tried.
    pub attempts: u32,
    /// When the consumer gave up.
    pub failed_at: DateTime<Utc>,
}

/// Where consumers put the messages they gave up on, to be listed and re-driven.
pub trait DeadLetterQueue: Send + Sync + 'static {
    /// Stores a dead letter; returns once the broker has it.
    fn send(
        &self,
        letter: &DeadLetteredMessage,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The dead letters of `consumer`, oldest first.
    fn list(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetteredMessage>, BrokerError>> + Send;

    /// Publishes the dead letter's original message again, to its original subject (so the
    /// consumer gets it as a new delivery), and removes it from the queue. `false` if there is
    /// no dead letter with that id.
    ///
    /// The message goes out with a new [`headers::MSG_ID`](super::headers::MSG_ID), so the
    /// broker's duplicate window does not drop it, and every other header unchanged: the
    /// consumer's inbox still knows the event by [`headers::EVENT_ID`](super::headers::EVENT_ID)
    /// (a re-driven event that was handled meanwhile is only acknowledged).
    fn redrive(&self, id: &str) -> impl Future<Output = Result<bool, BrokerError>> + Send;
}
