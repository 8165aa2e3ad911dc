//! NATS JetStream for es: the event log is the outbox. A relay publishes stored events to a
//! JetStream stream, other services consume them as typed events with exactly-once effects (an
//! inbox in the consumer's SQL transaction), retries with backoff and dead letters.
//!
//! The loops live in es-core (`es_core::integration`); this crate is their broker:
//!
//! - [`JetStreamPublisher`]: publishes with `Nats-Msg-Id` set to the event id, acknowledgements
//!   pipelined, so JetStream drops a re-published event within its duplicate window;
//! - [`ensure_stream`] with [`StreamSettings`]: the stream `<prefix>.>`, its duplicate window,
//!   storage and maximum age, created or updated in one call;
//! - [`JetStreamSubscription`]: a durable pull consumer with explicit acknowledgements; the
//!   attempt is JetStream's delivery count, a retry is a negative acknowledgement with a delay;
//! - [`JetStreamDeadLetters`]: the messages a consumer gave up on, on a stream of their own,
//!   listed and re-driven;
//! - [`EsNats`]: the connection and the events stream of a prefix, handing out all of the above.
//!
//! ```no_run
//! use std::time::Duration;
//! use es_core::integration::DeadLetterQueue;
//! use es_core::projection::{HandlerError, Projection};
//! use es_core::{Event, MemoryStore, RecordedEvent};
//! use es_nats::EsNats;
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! enum OrderEvent { Placed { total_cents: i64 } }
//!
//! /// Another service's read model of orders.
//! struct Totals(i64);
//!
//! impl Projection<MemoryStore> for Totals {
//!     type Event = OrderEvent;
//!     fn name(&self) -> &str { "order-totals" }
//!     async fn handle(
//!         &mut self,
//!         _transaction: &mut <MemoryStore as es_core::projection::ProjectionStore>::Transaction,
//!         event: &OrderEvent,
//!         _envelope: &RecordedEvent,
//!     ) -> Result<(), HandlerError> {
//!         let OrderEvent::Placed { total_cents } = event;
//!         self.0 += total_cents;
//!         Ok(())
//!     }
//!     async fn reset(
//!         &mut self,
//!         _transaction: &mut <MemoryStore as es_core::projection::ProjectionStore>::Transaction,
//!     ) -> Result<(), HandlerError> {
//!         self.0 = 0;
//!         Ok(())
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Connects and creates (or updates) the stream `ORDERS` of subjects `orders.>`.
//! let nats = EsNats::connect("nats://127.0.0.1:4222", "orders").await?;
//!
//! // The producing service relays its log (the outbox) to `orders.<stream type>.<event type>`.
//! let orders = MemoryStore::new();
//! let mut relay = nats.relay(orders.clone(), "order-service").publish_only::<OrderEvent>();
//! relay.publish_pending().await?;
//!
//! // A consuming service: a durable consumer `order-totals`, exactly-once effects through its
//! // store's inbox, retries, dead letters.
//! let mut consumer = nats.consumer(MemoryStore::new(), Totals(0)).await?;
//! while consumer.process_next(Duration::from_secs(1)).await?.is_some() {}
//! let waiting = consumer.pending().await?;
//! println!("total {}, {waiting} waiting", consumer.projection().0);
//!
//! // What it gave up on, listed and re-driven.
//! for letter in nats.dead_letters().await?.list("order-totals").await? {
//!     println!("{}: {}", letter.message.subject, letter.error);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The delivery guarantees, failure by failure, are in the workspace's `docs/nats.md`.

#![deny(missing_docs)]

mod connect;
mod dead_letters;
mod error;
mod headers;
mod publisher;
mod stream;
mod subscription;

pub use connect::{EsNats, MAX_ACKS_IN_FLIGHT, durable_name};
pub use dead_letters::{JetStreamDeadLetters, dead_letter_headers, dead_letter_stream_name};
pub use error::NatsError;
pub use publisher::{JetStreamAck, JetStreamPublisher};
pub use stream::{Storage, StreamSettings, ensure_stream};
pub use subscription::{JetStreamDelivery, JetStreamSubscription, SubscriptionSettings};

/// The async-nats client this crate is built on, for its types in this API.
pub use async_nats;
