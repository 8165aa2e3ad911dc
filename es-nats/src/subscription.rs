//! [`JetStreamSubscription`]: es-core's [`Subscription`] on a durable JetStream pull consumer.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use es_core::integration::{BrokerError, Delivery, Message, Subscription};
use futures_util::StreamExt;

use crate::error::{NatsError, check_filter_subject, check_name, unavailable};
use crate::headers::from_header_map;

/// The settings of a durable pull consumer.
///
/// Redelivery is the consumer loop's decision: `max_deliver` is high (1,000 by default) so that
/// JetStream never stops delivering a message before the loop dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionSettings {
    /// The JetStream stream consumed.
    pub stream: String,
    /// The durable consumer's name; JetStream remembers its acknowledgements across restarts.
    pub durable: String,
    /// Only the messages of these subjects (`<prefix>.order.>`); empty for the whole stream.
    /// NATS servers before 2.10 take at most one.
    pub filter_subject: Option<String>,
    /// How long a delivered message may stay unacknowledged before JetStream delivers it again
    /// (a consumer that died holding it). 30 s by default.
    pub ack_wait: Duration,
    /// How many times JetStream delivers a message at most; 1,000 by default.
    pub max_deliver: i64,
    /// How many delivered messages may wait for their acknowledgement at once; 1,000 by default.
    pub max_ack_pending: i64,
    /// How many messages one pull asks for; 100 by default.
    pub batch: usize,
}

impl SubscriptionSettings {
    /// A durable consumer `durable` of the stream `stream`, with the defaults.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: 1_000,
            max_ack_pending: 1_000,
            batch: 100,
        }
    }

    /// Only the messages of subjects matching `filter`.
    pub fn filter_subject(mut self, filter: impl Into<String>) -> Self {
        self.filter_subject = Some(filter.into());
        self
    }

    /// Sets the acknowledgement wait.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of deliveries.
    pub fn max_deliver(mut self, max_deliver: i64) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// Sets the maximum number of unacknowledged deliveries.
    pub fn max_ack_pending(mut self, max_ack_pending: i64) -> Self {
        self.max_ack_pending = max_ack_pending;
        self
    }

    /// Sets the pull batch size.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// A durable JetStream pull consumer as an es-core [`Subscription`].
///
/// **Order.** JetStream delivers a stream's messages in order, and the consumer loop handles
/// one delivery at a time. When a subscription opens on a durable consumer that still has
/// unacknowledged messages (the previous process died holding them), it waits out the ack wait
/// before its first pull, so those messages are redelivered before any newer one. A message
/// retried with a delay ([`retry_after`](Delivery::retry_after)) comes back after the messages
/// that follow it.
///
/// Messages are pulled in batches and delivered one by one; a message's
/// [`attempt`](Delivery::attempt) is JetStream's delivery count for it, a
/// [`retry_after`](Delivery::retry_after) is a negative acknowledgement with that delay, and
/// [`pending`](Subscription::pending) is the consumer's `num_pending + num_ack_pending`. The
/// subscription follows the client through reconnections and recreates its consumer if it was
/// deleted.
pub struct JetStreamSubscription {
    jetstream: jetstream::Context,
    settings: SubscriptionSettings,
    consumer: Option<Consumer<pull::Config>>,
    messages: Option<pull::Stream>,
    /// Until when the first pull waits, so that the messages a previous instance of the
    /// consumer held unacknowledged come back (after `ack_wait`) before newer ones.
    hold_until: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for JetStreamSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSubscription")
            .field("settings", &self.settings)
            .field("pulling", &self.messages.is_some())
            .finish_non_exhaustive()
    }
}

impl JetStreamSubscription {
    /// Creates the durable consumer of `settings` (or updates it to them) and subscribes.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: SubscriptionSettings,
    ) -> Result<Self, NatsError> {
        check_name("stream name", &settings.stream)?;
        check_name("durable consumer name", &settings.durable)?;
        if let Some(filter) = &settings.filter_subject {
            check_filter_subject(filter).map_err(|reason| NatsError::Invalid {
                what: "filter subject",
                value: filter.clone(),
                reason,
            })?;
        }
        let consumer = create_consumer(jetstream, &settings).await?;
        // Messages delivered to an earlier instance and never acknowledged (it crashed) come
        // back once their ack wait passes; pulling before then would get newer messages first.
        let hold_until = (consumer.cached_info().num_ack_pending > 0).then(|| {
            tokio::time::Instant::now() + settings.ack_wait * 3 / 2 + Duration::from_millis(500)
        });
        Ok(Self {
            jetstream: jetstream.clone(),
            settings,
            consumer: Some(consumer),
            messages: None,
            hold_until,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &SubscriptionSettings {
        &self.settings
    }

    async fn consumer(&mut self) -> Result<&Consumer<pull::Config>, BrokerError> {
        if self.consumer.is_none() {
            let consumer = create_consumer(&self.jetstream, &self.settings)
                .await
                .map_err(|error| {
                    unavailable(
                        format!("recreating consumer `{}`", self.settings.durable),
                        error,
                    )
                })?;
            self.consumer = Some(consumer);
        }
        match &self.consumer {
            Some(consumer) => Ok(consumer),
            None => Err(BrokerError::Unavailable {
                message: format!("consumer `{}` is not set up", self.settings.durable),
                source: None,
            }),
        }
    }

    async fn messages(&mut self) -> Result<&mut pull::Stream, BrokerError> {
        if self.messages.is_none() {
            let batch = self.settings.batch;
            let durable = self.settings.durable.clone();
            let stream = self
                .consumer()
                .await?
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|error| {
                    unavailable(format!("pulling from consumer `{durable}`"), error)
                })?;
            self.messages = Some(stream);
        }
        match &mut self.messages {
            Some(messages) => Ok(messages),
            None => Err(BrokerError::Unavailable {
                message: format!("consumer `{}` is not pulling", self.settings.durable),
                source: None,
            }),
        }
    }
}

async fn create_consumer(
    jetstream: &jetstream::Context,
    settings: &SubscriptionSettings,
) -> Result<Consumer<pull::Config>, NatsError> {
    let consumer_error = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Consumer {
        stream: settings.stream.clone(),
        consumer: settings.durable.clone(),
        source,
    };
    let stream = jetstream
        .get_stream_no_info(&settings.stream)
        .await
        .map_err(|error| consumer_error(Box::new(error)))?;
    stream
        .create_consumer(settings.config())
        .await
        .map_err(|error| consumer_error(Box::new(error)))
}

impl Subscription for JetStreamSubscription {
    type Delivery = JetStreamDelivery;

    async fn next(&mut self, timeout: Duration) -> Result<Option<JetStreamDelivery>, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(until) = self.hold_until {
            if until > deadline {
                tokio::time::sleep_until(deadline).await;
                return Ok(None);
            }
            tokio::time::sleep_until(until).await;
            self.hold_until = None;
        }
        let durable = self.settings.durable.clone();
        let messages = self.messages().await?;
        let next = match tokio::time::timeout_at(deadline, messages.next()).await {
            Err(_elapsed) => return Ok(None),
            Ok(next) => next,
        };
        match next {
            Some(Ok(message)) => Ok(Some(JetStreamDelivery::new(message))),
            Some(Err(error)) => {
                if error.kind() == MessagesErrorKind::ConsumerDeleted {
                    tracing::warn!(consumer = %durable, "durable consumer deleted on the server; recreating it");
                    self.messages = None;
                    self.consumer = None;
                }
                Err(unavailable(
                    format!("pulling from consumer `{durable}`"),
                    error,
                ))
            }
            None => {
                self.messages = None;
                Err(BrokerError::Unavailable {
                    message: format!("pulling from consumer `{durable}`: the pull ended"),
                    source: None,
                })
            }
        }
    }

    async fn pending(&mut self) -> Result<u64, BrokerError> {
        let durable = self.settings.durable.clone();
        let info = self.consumer().await?.get_info().await.map_err(|error| {
            unavailable(format!("reading the state of consumer `{durable}`"), error)
        })?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

/// One delivery of a JetStream message.
///
/// [`ack`](Delivery::ack) and [`retry_after`](Delivery::retry_after) send the acknowledgement
/// without waiting for the server to confirm it: one lost on the way (the connection dropped)
/// means the message comes again after the ack wait, which the consumer's inbox absorbs.
pub struct JetStreamDelivery {
    message: Message,
    attempt: u32,
    stream_sequence: u64,
    acker: jetstream::message::Acker,
}

impl std::fmt::Debug for JetStreamDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamDelivery")
            .field("subject", &self.message.subject)
            .field("attempt", &self.attempt)
            .field("stream_sequence", &self.stream_sequence)
            .finish_non_exhaustive()
    }
}

impl JetStreamDelivery {
    fn new(message: jetstream::Message) -> Self {
        let (attempt, stream_sequence) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                info.stream_sequence,
            ),
            Err(_) => (1, 0),
        };
        let (message, acker) = message.split();
        Self {
            message: Message {
                subject: message.subject.to_string(),
                headers: from_header_map(message.headers.as_ref()),
                payload: message.payload.to_vec(),
            },
            attempt,
            stream_sequence,
            acker,
        }
    }

    /// The message's sequence in the JetStream stream (0 if JetStream did not say).
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }
}

impl Delivery for JetStreamDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    async fn ack(self) -> Result<(), BrokerError> {
        let sequence = self.stream_sequence;
        self.acker
            .ack()
            .await
            .map_err(|error| BrokerError::Unavailable {
                message: format!("acknowledging stream message {sequence}"),
                source: Some(error),
            })
    }

    async fn retry_after(self, delay: Duration) -> Result<(), BrokerError> {
        let sequence = self.stream_sequence;
        let kind = if delay.is_zero() {
            AckKind::Nak(None)
        } else {
            AckKind::Nak(Some(delay))
        };
        self.acker
            .ack_with(kind)
            .await
            .map_err(|error| BrokerError::Unavailable {
                message: format!("asking redelivery of stream message {sequence}"),
                source: Some(error),
            })
    }
}
