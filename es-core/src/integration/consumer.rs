//! [`Consumer`]: handles the events another service published.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use tracing::Instrument;

use super::broker::{
    BrokerError, DeadLetterQueue, DeadLetteredMessage, Delivery, Message, Subscription,
};
use super::inbox::InboxStore;
use super::message::{MessageError, decode_error};
use crate::envelope::RecordedEvent;
use crate::event::{DecodeError, Event};
use crate::projection::{Projection, RetryPolicy};
use crate::store::StoreError;
use crate::stream::LogScope;

/// A message no number of deliveries can handle: dead-lettered at once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BadMessage {
    /// The message is not a published event: a header is missing or invalid, or the payload
    /// is not JSON.
    #[error("not an event message: {0}")]
    Malformed(#[source] MessageError),
    /// The event does not decode as the consumer's events: an unknown event type, a schema
    /// version newer than the code knows, no upcast path, or a payload that does not match.
    #[error("cannot decode the event: {}", decode_error(.0))]
    Undecodable(#[source] DecodeError),
}

/// Why a message was dead-lettered.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The message is bad; see [`BadMessage`].
    BadMessage(BadMessage),
    /// The handler (or the commit of its transaction) failed on every delivery.
    Failed {
        /// Deliveries tried.
        attempts: u32,
        /// The last error, as text.
        error: String,
    },
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::BadMessage(bad) => write!(f, "{bad}"),
            DeadLetterReason::Failed { attempts, error } => {
                write!(f, "failed {attempts} deliveries: {error}")
            }
        }
    }
}

/// What [`Consumer::process_next`] did with a delivery.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler ran and its transaction committed with the inbox entry; acknowledged.
    Handled,
    /// The inbox already held the event: nothing was done again; acknowledged.
    Duplicate,
    /// The event type is unknown to the consumer and it ignores those
    /// ([`Consumer::ignore_unknown_types`]); acknowledged.
    Ignored,
    /// The delivery failed and the broker delivers it again after a backoff.
    Retrying {
        /// The attempt that failed (1 for the first delivery).
        attempt: u32,
        /// The error, as text.
        error: String,
    },
    /// The message went to the dead-letter queue and was acknowledged.
    DeadLettered {
        /// Why.
        reason: DeadLetterReason,
    },
}

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The broker failed (receiving, acknowledging, dead-lettering); an unacknowledged
    /// delivery comes again.
    #[error("consumer `{consumer}`: {source}")]
    Broker {
        /// The consumer (its projection's name).
        consumer: String,
        /// The broker's error.
        source: BrokerError,
    },
    /// The store failed in a way retrying will not mend; the delivery was handed back to the
    /// broker to come again.
    #[error("consumer `{consumer}`: {source}")]
    Store {
        /// The consumer.
        consumer: String,
        /// The store's error.
        source: StoreError,
    },
}

/// The result of handling a decoded event.
enum Handled {
    Done,
    Duplicate,
    Failed(String),
    Store(StoreError),
}

/// [`Consumer`]: handles the events another service published, with exactly-once effects,
/// retries and dead letters.
///
/// The handler is a [`Projection`]: a read model written once runs on the local log (with a
/// [`ProjectionRunner`](crate::projection::ProjectionRunner)) and on a broker's messages alike.
/// Per delivery the consumer
///
/// 1. reads the message back into an event ([`Message::to_event`]) and decodes it as
///    `P::Event` with [`Event::decode`], so a message at an older schema version is upcast;
/// 2. begins a store transaction (scoped to the event's tenant), records the event id in the
///    inbox ([`InboxStore::record_processed`]) and, if it is new, calls the projection's
///    `handle` in the same transaction, then commits and acknowledges. An event delivered
///    again (a lost acknowledgement, a re-drive) finds itself in the inbox and is only
///    acknowledged ([`Outcome::Duplicate`]): the handler's writes through the transaction
///    happen exactly once;
/// 3. on a handler failure (or a commit that fails for a reason other than the database being
///    unavailable), rolls back and asks the broker to deliver again after a backoff, until the
///    delivery's attempt reaches [`Consumer::max_deliveries`]; then sends the message to the
///    dead-letter queue with the error and acknowledges it ([`Outcome::DeadLettered`]);
/// 4. dead-letters a bad message at once, since delivering it again cannot help: not an event
///    message, an event type `P::Event` does not know, a schema version newer than the code
///    knows, a payload that does not decode ([`BadMessage`]);
/// 5. retries an unavailable store ([`StoreError::is_transient`]) without counting towards dead
///    letters.
///
/// Nothing a message holds makes the consumer panic or stops it from handling the next one.
///
/// ```
/// use std::time::Duration;
/// use es_core::integration::{Consumer, MemoryBus, Outcome, Relay};
/// use es_core::projection::{HandlerError, Projection};
/// use es_core::{CommandContext, Event, EventStore, ExpectedVersion, MemoryStore};
/// use es_core::{MemoryTransaction, NewEvent, RecordedEvent, StreamKey};
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum OrderEvent { Placed { total_cents: i64 } }
///
/// /// Billing's read model of other services' orders.
/// struct Revenue(std::sync::Arc<std::sync::atomic::AtomicI64>);
///
/// impl Projection<MemoryStore> for Revenue {
///     type Event = OrderEvent;
///     fn name(&self) -> &str { "revenue" }
///     async fn handle(
///         &mut self,
///         transaction: &mut MemoryTransaction,
///         event: &OrderEvent,
///         _: &RecordedEvent,
///     ) -> Result<(), HandlerError> {
///         let OrderEvent::Placed { total_cents } = *event;
///         let revenue = self.0.clone();
///         transaction.on_commit(move || { revenue.fetch_add(total_cents, std::sync::atomic::Ordering::SeqCst); });
///         Ok(())
///     }
///     async fn reset(&mut self, _: &mut MemoryTransaction) -> Result<(), HandlerError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The order service stores an event and its relay publishes it.
/// let orders = MemoryStore::new();
/// let placed = NewEvent::encode(&OrderEvent::Placed { total_cents: 1250 }, &CommandContext::new().metadata())?;
/// orders.append(StreamKey::new("order", "o-1"), ExpectedVersion::NoStream, vec![placed]).await?;
/// let bus = MemoryBus::new();
/// let subscription = bus.subscribe("revenue", "es.order.>")?;
/// Relay::new(orders, bus.clone(), "orders").publish_pending().await?;
///
/// // Billing consumes it, in its own store.
/// let revenue = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
/// let mut consumer = Consumer::new(MemoryStore::new(), Revenue(revenue.clone()), subscription, bus)
///     .max_deliveries(5);
/// let outcome = consumer.process_next(Duration::from_secs(1)).await?;
/// assert!(matches!(outcome, Some(Outcome::Handled)));
/// assert_eq!(revenue.load(std::sync::atomic::Ordering::SeqCst), 1250);
/// assert_eq!(consumer.pending().await?, 0);
/// # Ok(())
/// # }
/// ```
pub struct Consumer<S, P, Sub, D>
where
    S: InboxStore,
    P: Projection<S>,
    Sub: Subscription,
    D: DeadLetterQueue,
{
    store: S,
    projection: P,
    subscription: Sub,
    dead_letters: D,
    retry: RetryPolicy,
    poll_timeout: Duration,
    ignore_unknown_types: bool,
}

impl<S, P, Sub, D> fmt::Debug for Consumer<S, P, Sub, D>
where
    S: InboxStore,
    P: Projection<S>,
    Sub: Subscription,
    D: DeadLetterQueue,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("consumer", &self.projection.name())
            .field("retry", &self.retry)
            .field("poll_timeout", &self.poll_timeout)
            .field("ignore_unknown_types", &self.ignore_unknown_types)
            .finish()
    }
}

impl<S, P, Sub, D> Consumer<S, P, Sub, D>
where
    S: InboxStore,
    P: Projection<S>,
    Sub: Subscription,
    D: DeadLetterQueue,
{
    /// A consumer named after `projection` (its inbox key and the `consumer` of its dead
    /// letters), handling `subscription`'s deliveries and dead-lettering into `dead_letters`;
    /// 5 deliveries at most, backoff per [`RetryPolicy::default`].
    pub fn new(store: S, projection: P, subscription: Sub, dead_letters: D) -> Self {
        Self {
            store,
            projection,
            subscription,
            dead_letters,
            retry: RetryPolicy::default(),
            poll_timeout: Duration::from_secs(1),
            ignore_unknown_types: false,
        }
    }

    /// Sets how many deliveries a failing message gets before it is dead-lettered (at least
    /// 1); default 5.
    pub fn max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.retry.max_attempts = max_deliveries.max(1);
        self
    }

    /// Sets the retry policy: `max_attempts` is the number of deliveries (as
    /// [`max_deliveries`](Self::max_deliveries)), the backoff the delay before each redelivery.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            max_attempts: retry.max_attempts.max(1),
            ..retry
        };
        self
    }

    /// Acknowledges messages of event types `P::Event` does not know ([`Outcome::Ignored`])
    /// instead of dead-lettering them: for a consumer subscribed to more subjects than it
    /// handles.
    pub fn ignore_unknown_types(mut self, ignore: bool) -> Self {
        self.ignore_unknown_types = ignore;
        self
    }

    /// Sets how long [`run`](Self::run) waits for a delivery before it looks at its shutdown
    /// signal again; default one second.
    pub fn poll_timeout(mut self, poll_timeout: Duration) -> Self {
        self.poll_timeout = poll_timeout;
        self
    }

    /// The consumer's name: its projection's.
    pub fn name(&self) -> &str {
        self.projection.name()
    }

    /// How many deliveries a failing message gets.
    pub fn deliveries(&self) -> u32 {
        self.retry.max_attempts
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The projection, mutably.
    pub fn projection_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The subscription.
    pub fn subscription_mut(&mut self) -> &mut Sub {
        &mut self.subscription
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue(&self) -> &D {
        &self.dead_letters
    }

    fn broker_error(&self, source: BrokerError) -> ConsumerError {
        ConsumerError::Broker {
            consumer: self.name().to_owned(),
            source,
        }
    }

    /// The consumer's lag: messages waiting for its subscription, delivered or not.
    pub async fn pending(&mut self) -> Result<u64, ConsumerError> {
        let pending = self
            .subscription
            .pending()
            .await
            .map_err(|e| self.broker_error(e))?;
        tracing::debug!(consumer = %self.name(), pending, "consumer lag");
        Ok(pending)
    }

    /// Waits at most `timeout` for a delivery and processes it; `None` if none came.
    pub async fn process_next(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Outcome>, ConsumerError> {
        let delivery = self
            .subscription
            .next(timeout)
            .await
            .map_err(|e| self.broker_error(e))?;
        match delivery {
            None => Ok(None),
            Some(delivery) => self.process(delivery).await.map(Some),
        }
    }

    /// Processes deliveries until `shutdown` completes (looked at between deliveries, and at
    /// least every [`poll_timeout`](Self::poll_timeout)). An unavailable broker is retried with
    /// backoff; other broker errors and store errors that retrying cannot mend stop it.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConsumerError> {
        let mut shutdown = pin!(shutdown);
        let mut failures = 0u32;
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                return Ok(());
            }
            match self.process_next(self.poll_timeout).await {
                Ok(Some(_)) => failures = 0,
                Ok(None) => {
                    failures = 0;
                    // Idle: report the lag, which is what waits behind nothing.
                    if let Err(error) = self.pending().await {
                        tracing::debug!(consumer = %self.name(), %error, "consumer lag unknown");
                    }
                }
                Err(ConsumerError::Broker { source, .. }) if source.is_transient() => {
                    failures += 1;
                    tracing::warn!(consumer = %self.name(), error = %source, failures, "consumer cannot reach the broker; retrying");
                    let sleep = pin!(tokio::time::sleep(self.retry.backoff(failures)));
                    if let futures_util::future::Either::Left(_) =
                        futures_util::future::select(shutdown.as_mut(), sleep).await
                    {
                        return Ok(());
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads the message and decodes its event.
    fn parse(message: &Message) -> Result<(RecordedEvent, P::Event), BadMessage> {
        let envelope = message.to_event().map_err(BadMessage::Malformed)?;
        if !P::Event::knows(&envelope.event_type) {
            return Err(BadMessage::Undecodable(DecodeError::UnknownType {
                event_type: envelope.event_type,
            }));
        }
        let event = envelope
            .decode::<P::Event>()
            .map_err(BadMessage::Undecodable)?;
        Ok((envelope, event))
    }

    async fn process(&mut self, delivery: Sub::Delivery) -> Result<Outcome, ConsumerError> {
        let attempt = delivery.attempt();
        let consumer = self.name().to_owned();
        let (envelope, event) = match Self::parse(delivery.message()) {
            Ok(parsed) => parsed,
            Err(BadMessage::Undecodable(DecodeError::UnknownType { event_type }))
                if self.ignore_unknown_types =>
            {
                tracing::debug!(
                    consumer,
                    event_type,
                    "consumer ignores an unknown event type"
                );
                delivery.ack().await.map_err(|e| self.broker_error(e))?;
                return Ok(Outcome::Ignored);
            }
            Err(bad) => {
                tracing::error!(consumer, attempt, error = %bad, "consumer dead-letters a bad message");
                let reason = DeadLetterReason::BadMessage(bad);
                self.dead_letter(delivery, &reason, attempt).await?;
                return Ok(Outcome::DeadLettered { reason });
            }
        };
        let span = tracing::debug_span!(
            "es.consumer.message",
            consumer,
            event_id = %envelope.event_id,
            event_type = %envelope.event_type,
            attempt,
        );
        match self.handle(&envelope, &event).instrument(span).await {
            Handled::Done => {
                delivery.ack().await.map_err(|e| self.broker_error(e))?;
                tracing::debug!(consumer, event_id = %envelope.event_id, "consumer handled an event");
                Ok(Outcome::Handled)
            }
            Handled::Duplicate => {
                delivery.ack().await.map_err(|e| self.broker_error(e))?;
                tracing::debug!(consumer, event_id = %envelope.event_id, "consumer skipped an event it processed before");
                Ok(Outcome::Duplicate)
            }
            Handled::Failed(error) if attempt >= self.retry.max_attempts => {
                tracing::error!(consumer, event_id = %envelope.event_id, attempt, %error, "consumer dead-letters an event after its last delivery");
                let reason = DeadLetterReason::Failed {
                    attempts: attempt,
                    error,
                };
                self.dead_letter(delivery, &reason, attempt).await?;
                Ok(Outcome::DeadLettered { reason })
            }
            Handled::Failed(error) => {
                tracing::warn!(consumer, event_id = %envelope.event_id, attempt, %error, "consumer handler failed; delivering again later");
                delivery
                    .retry_after(self.retry.backoff(attempt))
                    .await
                    .map_err(|e| self.broker_error(e))?;
                Ok(Outcome::Retrying { attempt, error })
            }
            Handled::Store(error) => {
                tracing::warn!(consumer, event_id = %envelope.event_id, attempt, %error, "consumer store failed; delivering again later");
                delivery
                    .retry_after(self.retry.backoff(attempt))
                    .await
                    .map_err(|e| self.broker_error(e))?;
                if error.is_transient() {
                    Ok(Outcome::Retrying {
                        attempt,
                        error: error.to_string(),
                    })
                } else {
                    Err(ConsumerError::Store {
                        consumer,
                        source: error,
                    })
                }
            }
        }
    }

    /// The inbox entry and the handler's writes in one transaction.
    async fn handle(&mut self, envelope: &RecordedEvent, event: &P::Event) -> Handled {
        let consumer = self.projection.name().to_owned();
        let mut transaction = match self.store.begin(LogScope::Tenant(&envelope.tenant)).await {
            Ok(transaction) => transaction,
            Err(error) => return Handled::Store(error),
        };
        match self
            .store
            .record_processed(&mut transaction, &consumer, envelope.event_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Handled::Duplicate,
            Err(error) => return Handled::Store(error),
        }
        if let Err(error) = self
            .projection
            .handle(&mut transaction, event, envelope)
            .await
        {
            drop(transaction);
            return Handled::Failed(error.to_string());
        }
        match self.store.commit(transaction).await {
            Ok(()) => Handled::Done,
            Err(error) if error.is_transient() => Handled::Store(error),
            Err(error) => Handled::Failed(error.to_string()),
        }
    }

    /// Sends the message to the dead-letter queue, then acknowledges it. Borrows only what it
    /// needs across its awaits, so the consumer's futures stay `Send` for any projection.
    async fn dead_letter(
        &mut self,
        delivery: Sub::Delivery,
        reason: &DeadLetterReason,
        attempts: u32,
    ) -> Result<(), ConsumerError> {
        let consumer = self.name().to_owned();
        let letter = DeadLetteredMessage {
            id: String::new(),
            consumer: consumer.clone(),
            message: delivery.message().clone(),
            error: reason.to_string(),
            attempts,
            failed_at: Utc::now(),
        };
        let broker = |source| ConsumerError::Broker {
            consumer: consumer.clone(),
            source,
        };
        self.dead_letters.send(&letter).await.map_err(broker)?;
        delivery.ack().await.map_err(broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// A consumer on any store, subscription and queue runs in a spawned task.
    #[allow(dead_code)]
    fn futures_are_send<S, P, Sub, D>(consumer: &mut Consumer<S, P, Sub, D>)
    where
        S: InboxStore,
        P: Projection<S>,
        Sub: Subscription,
        D: DeadLetterQueue,
    {
        is_send(&consumer.process_next(Duration::ZERO));
        is_send(&consumer.run(async {}));
        is_send(&consumer.pending());
    }
}
