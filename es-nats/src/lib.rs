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
//! use es_core::integration::{Delivery, Subscription};
//! use es_nats::EsNats;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Connects and creates (or updates) the stream `ORDERS` of subjects `orders.>`.
//! let nats = EsNats::connect("nats://127.0.0.1:4222", "orders").await?;
//!
//! // A relay publishes through this (see `es_core::integration::Relay`).
//! let _publisher = nats.publisher();
//!
//! // Another service reads them through a durable consumer...
//! let mut subscription = nats.subscribe("order-summary").await?;
//! if let Some(delivery) = subscription.next(Duration::from_secs(1)).await? {
//!     println!("{} (attempt {})", delivery.message().subject, delivery.attempt());
//!     delivery.ack().await?;
//! }
//! println!("{} waiting", subscription.pending().await?);
//!
//! // ...and puts what it gave up on in the dead-letter queue.
//! let _dead_letters = nats.dead_letters().await?;
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

pub use connect::{EsNats, MAX_ACKS_IN_FLIGHT};
pub use dead_letters::{JetStreamDeadLetters, dead_letter_headers, dead_letter_stream_name};
pub use error::NatsError;
pub use publisher::{JetStreamAck, JetStreamPublisher};
pub use stream::{Storage, StreamSettings, ensure_stream};
pub use subscription::{JetStreamDelivery, JetStreamSubscription, SubscriptionSettings};

/// The async-nats client this crate is built on, for its types in this API.
pub use async_nats;
