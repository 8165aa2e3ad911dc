//! [`EsNats`]: one connection, the events stream of a prefix, and the pieces built on them.

use std::time::Duration;

use async_nats::jetstream;
use es_core::integration::{Consumer, InboxStore, Relay};
use es_core::projection::{Projection, ProjectionStore};

use crate::dead_letters::JetStreamDeadLetters;
use crate::error::NatsError;
use crate::publisher::JetStreamPublisher;
use crate::stream::{StreamSettings, ensure_stream};
use crate::subscription::{JetStreamSubscription, SubscriptionSettings};

/// How many publishes may wait for their JetStream acknowledgement at once on the context
/// [`EsNats::connect`] builds; a publish beyond it waits.
pub const MAX_ACKS_IN_FLIGHT: usize = 4_096;

/// A NATS connection with its JetStream context and the events stream of one subject prefix:
/// what a service needs to relay its events and to consume other services' events.
///
/// [`connect`](Self::connect) creates (or updates) the events stream `<prefix>.>`;
/// [`publisher`](Self::publisher), [`subscribe`](Self::subscribe) and
/// [`dead_letters`](Self::dead_letters) give the broker side of es-core's relay and consumer.
#[derive(Debug, Clone)]
pub struct EsNats {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    prefix: String,
    stream: StreamSettings,
}

impl EsNats {
    /// Connects to the NATS server at `url` (`nats://127.0.0.1:4222`) and ensures the events
    /// stream of `prefix` with the default settings ([`StreamSettings::for_prefix`]). The
    /// client reconnects by itself after losing the server.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, NatsError> {
        Self::connect_with(url, prefix, StreamSettings::for_prefix(prefix)).await
    }

    /// Like [`connect`](Self::connect) with the events stream's settings given.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        stream: StreamSettings,
    ) -> Result<Self, NatsError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|source| NatsError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Self::from_client(client, prefix, stream).await
    }

    /// Uses an existing client: builds the JetStream context (publishes wait when
    /// [`MAX_ACKS_IN_FLIGHT`] acknowledgements are pending) and ensures the events stream.
    pub async fn from_client(
        client: async_nats::Client,
        prefix: &str,
        stream: StreamSettings,
    ) -> Result<Self, NatsError> {
        let jetstream = jetstream::ContextBuilder::new()
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client.clone());
        ensure_stream(&jetstream, &stream).await?;
        Ok(Self {
            client,
            jetstream,
            prefix: prefix.to_owned(),
            stream,
        })
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The subject prefix: events are published to `<prefix>.<stream type>.<event type>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The events stream's settings.
    pub fn stream_settings(&self) -> &StreamSettings {
        &self.stream
    }

    /// A publisher for a relay.
    pub fn publisher(&self) -> JetStreamPublisher {
        JetStreamPublisher::new(self.jetstream.clone())
    }

    /// Subscribes the durable consumer `durable` to the whole events stream, with the default
    /// settings ([`SubscriptionSettings::new`]).
    pub async fn subscribe(&self, durable: &str) -> Result<JetStreamSubscription, NatsError> {
        self.subscribe_with(SubscriptionSettings::new(self.stream.name.clone(), durable))
            .await
    }

    /// Subscribes with the given settings.
    pub async fn subscribe_with(
        &self,
        settings: SubscriptionSettings,
    ) -> Result<JetStreamSubscription, NatsError> {
        JetStreamSubscription::open(&self.jetstream, settings).await
    }

    /// The subject prefix of the dead letters: `dlq.<prefix>`.
    pub fn dead_letter_prefix(&self) -> String {
        if self.prefix.is_empty() {
            "dlq".to_owned()
        } else {
            format!("dlq.{}", self.prefix)
        }
    }

    /// The dead-letter queue of this prefix: stream `DLQ_<PREFIX>`, subjects `dlq.<prefix>.>`
    /// (created if missing).
    pub async fn dead_letters(&self) -> Result<JetStreamDeadLetters, NatsError> {
        JetStreamDeadLetters::open(&self.jetstream, &self.dead_letter_prefix()).await
    }

    /// A relay named `name` publishing `store`'s log to this prefix's stream: es-core's
    /// [`Relay`] with this publisher and [`subject_prefix`](Relay::subject_prefix) set; the
    /// rest (`map`, `publish_only`, `batch_size`, ...) as on any relay.
    ///
    /// ```no_run
    /// # async fn example(store: es_core::MemoryStore) -> Result<(), Box<dyn std::error::Error>> {
    /// let nats = es_nats::EsNats::connect("nats://127.0.0.1:4222", "orders").await?;
    /// let mut relay = nats.relay(store, "order-service").batch_size(1_000);
    /// relay.run(std::future::pending()).await?; // until the process stops
    /// # Ok(())
    /// # }
    /// ```
    pub fn relay<S: ProjectionStore>(&self, store: S, name: &str) -> Relay<S, JetStreamPublisher> {
        Relay::new(store, self.publisher(), name).subject_prefix(self.prefix.as_str())
    }

    /// A consumer handling this prefix's stream with `projection` on `store`: es-core's
    /// [`Consumer`] on a durable consumer named after the projection ([`durable_name`]) with the
    /// default [`SubscriptionSettings`], dead-lettering into
    /// [`dead_letters`](Self::dead_letters). For other subscription settings, build the
    /// [`Consumer`] from [`subscribe_with`](Self::subscribe_with).
    pub async fn consumer<S, P>(
        &self,
        store: S,
        projection: P,
    ) -> Result<Consumer<S, P, JetStreamSubscription, JetStreamDeadLetters>, NatsError>
    where
        S: InboxStore,
        P: Projection<S>,
    {
        let durable = durable_name(projection.name());
        let subscription = self.subscribe(&durable).await?;
        let dead_letters = self.dead_letters().await?;
        Ok(Consumer::new(store, projection, subscription, dead_letters))
    }
}

/// The durable consumer name of a projection name: the name itself when it holds only ASCII
/// letters, digits, `-` and `_` (what every NATS server takes in a consumer name); otherwise
/// each other character replaced by `_` and a hash of the whole name appended, so that distinct
/// names stay distinct (`billing.v2` gives `billing_v2-` and eight hex digits).
pub fn durable_name(name: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !name.is_empty() && name.chars().all(plain) {
        return name.to_owned();
    }
    // FNV-1a, 32 bits: stable across releases and platforms.
    let hash = name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    let cleaned: String = name
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    format!("{cleaned}-{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::durable_name;

    #[test]
    fn durable_names_keep_plain_names_and_keep_others_apart() {
        assert_eq!(durable_name("order-summary_2"), "order-summary_2");
        let dotted = durable_name("billing.v2");
        assert!(dotted.starts_with("billing_v2-"), "{dotted}");
        assert_eq!(dotted.len(), "billing_v2-".len() + 8);
        assert_ne!(durable_name("billing.v2"), durable_name("billing v2"));
        assert_ne!(durable_name("billing.v2"), durable_name("billing_v2"));
        assert!(durable_name("").starts_with('-'));
        assert!(durable_name("café").is_ascii());
    }
}
