//! [`JetStreamPublisher`]: es-core's [`Publisher`] on JetStream, with pipelined acknowledgements.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use es_core::integration::{BrokerError, Message, Publisher};

use crate::error::{check_publish_subject, rejected, unavailable};
use crate::headers::into_header_map;

/// Publishes to JetStream: `publish_with_headers`, whose acknowledgement future is the
/// [`Publisher::Ack`]. The message's headers go as they are, `Nats-Msg-Id` included, so
/// JetStream drops a second message with the same id within the stream's duplicate window.
///
/// Build the JetStream context with `backpressure_on_inflight(true)` (as
/// [`EsNats::connect`](crate::EsNats::connect) does) so that a publish beyond the context's
/// in-flight limit waits instead of failing.
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    jetstream: jetstream::Context,
}

impl JetStreamPublisher {
    /// A publisher on a JetStream context.
    pub fn new(jetstream: jetstream::Context) -> Self {
        Self { jetstream }
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

/// The acknowledgement of one published message: resolves once JetStream stored it (or dropped
/// it as a duplicate, which is as good).
#[must_use = "an acknowledgement not awaited says nothing about the message"]
pub struct JetStreamAck {
    subject: String,
    inner: Pin<
        Box<
            dyn Future<
                    Output = Result<
                        jetstream::publish::PublishAck,
                        jetstream::context::PublishError,
                    >,
                > + Send,
        >,
    >,
}

impl std::fmt::Debug for JetStreamAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamAck")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Future for JetStreamAck {
    type Output = Result<(), BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => Poll::Ready(Err(publish_error(&self.subject, error))),
        }
    }
}

/// A JetStream publish error as a broker error: no stream for the subject, a message too large
/// or a failed expectation are refusals; the rest may pass on a retry.
fn publish_error(subject: &str, error: jetstream::context::PublishError) -> BrokerError {
    match error.kind() {
        PublishErrorKind::StreamNotFound => rejected(format!(
            "publishing to `{subject}`: no jetstream stream stores this subject (create it with `ensure_stream`)"
        )),
        PublishErrorKind::MaxPayloadExceeded => rejected(format!(
            "publishing to `{subject}`: the message exceeds the server's max payload"
        )),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            rejected(format!("publishing to `{subject}`: {}", error.kind()))
        }
        _ => unavailable(format!("publishing to `{subject}`"), error),
    }
}

impl Publisher for JetStreamPublisher {
    type Ack = JetStreamAck;

    async fn publish(&self, message: Message) -> Result<JetStreamAck, BrokerError> {
        check_publish_subject(&message.subject).map_err(|reason| {
            rejected(format!(
                "publishing to `{}`: invalid subject, {reason}",
                message.subject.escape_debug()
            ))
        })?;
        let headers = into_header_map(message.headers)?;
        let ack = self
            .jetstream
            .publish_with_headers(
                message.subject.clone(),
                headers,
                Bytes::from(message.payload),
            )
            .await
            .map_err(|error| publish_error(&message.subject, error))?;
        Ok(JetStreamAck {
            subject: message.subject,
            inner: Box::pin(std::future::IntoFuture::into_future(ack)),
        })
    }
}
