//! [`Relay`]: publishes the events of a store's global log to a broker.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use uuid::Uuid;

use super::broker::{BrokerError, Message, Publisher};
use super::message::decode_error;
use crate::envelope::{Position, RecordedEvent};
use crate::event::{DecodeError, Event};
use crate::json::EncodeError;
use crate::projection::{ProjectionStore, RetryPolicy};
use crate::store::StoreError;
use crate::stream::{LogScope, Tenant};

/// Why a relay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The store failed.
    #[error("relay `{relay}`: {source}")]
    Store {
        /// The relay's key.
        relay: String,
        /// The store's error.
        source: StoreError,
    },
    /// The broker failed (after the retries, if it was unavailable).
    #[error("relay `{relay}`: {source}")]
    Broker {
        /// The relay's key.
        relay: String,
        /// The broker's error.
        source: BrokerError,
    },
    /// Another relay of the same name (and tenant) holds its lock.
    #[error("relay `{relay}` is already running elsewhere")]
    AlreadyRunning {
        /// The relay's key.
        relay: String,
    },
    /// The relay lost its lock (another relay may have taken over); its last checkpoint was
    /// not committed.
    #[error("relay `{relay}` lost its lock: another relay may have taken over")]
    LockLost {
        /// The relay's key.
        relay: String,
    },
    /// A stored event that a [`map`](Relay::map) rule takes does not decode; the relay stops
    /// before it, since publishing past it would skip it.
    #[error(
        "relay `{relay}` cannot decode event `{event_type}` at position {position}: {}",
        decode_error(source)
    )]
    Decode {
        /// The relay's key.
        relay: String,
        /// The event's position.
        position: Position,
        /// The stored event type.
        event_type: String,
        /// The decoding error.
        source: DecodeError,
    },
    /// The integration event a [`map`](Relay::map) rule made does not encode; the relay stops
    /// before it.
    #[error(
        "relay `{relay}` cannot encode integration event `{event_type}` for position {position}: {source}"
    )]
    Encode {
        /// The relay's key.
        relay: String,
        /// The domain event's position.
        position: Position,
        /// The integration event type.
        event_type: String,
        /// The encoding error.
        source: EncodeError,
    },
}

/// What [`Relay::publish_pending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySummary {
    /// Messages published and acknowledged.
    pub published: u64,
    /// Events no rule publishes (or that a mapping turned into nothing), passed over.
    pub skipped: u64,
    /// The checkpoint reached.
    pub checkpoint: Position,
}

/// How far behind a relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLag {
    /// The relay's checkpoint ([`Position::START`] before its first commit).
    pub checkpoint: Position,
    /// Events of its scope in the log after the checkpoint.
    pub behind: u64,
}

/// What one rule makes of a stored event.
enum Routed {
    /// The rule does not know the event type: the next rule decides.
    NotMine,
    /// Known, and not published.
    Skip,
    /// Publish the stored event as it is.
    PublishStored,
    /// Publish this integration event, made from the stored one.
    Publish(RecordedEvent),
    /// The rule failed: the relay stops.
    Failed(RuleError),
}

enum RuleError {
    Decode(DecodeError),
    Encode {
        event_type: &'static str,
        source: EncodeError,
    },
}

type Rule = Box<dyn Fn(&RecordedEvent) -> Routed + Send + Sync>;

/// [`Relay`]: publishes the events of a store's global log to a broker. The log is the outbox:
/// an event is stored once, by the command that caused it, and the relay publishes it after.
///
/// **Delivery.** At least once, never skipping: the relay reads from its checkpoint, publishes
/// the events in log order (pipelined: up to [`Relay::max_in_flight`] acknowledgements
/// awaited later, in order), and moves its checkpoint past an event only once the broker
/// acknowledged it and every event before it. After a crash the relay publishes again from its
/// checkpoint; the broker drops what it already has by [`headers::MSG_ID`](super::headers::MSG_ID) within its duplicate
/// window, and consumers' inboxes drop the rest by [`headers::EVENT_ID`](super::headers::EVENT_ID). Within a stream the
/// broker receives events in version order.
///
/// **What is published.** Every event, unless the relay is told which:
/// [`publish_only`](Relay::publish_only) publishes the events an [`Event`] enum knows, as
/// stored; [`map`](Relay::map) turns a domain event into an integration event (a public
/// contract that can differ from the stored one). The first rule that knows an event type
/// decides; events no rule knows are skipped (and the checkpoint passes them).
///
/// **One relay per name.** The relay's checkpoint and lock live in the store, under
/// `relay:<name>` (`relay:<name>@<tenant>` for a relay scoped to a tenant); a second relay of
/// the same name is refused with [`RelayError::AlreadyRunning`], and every checkpoint commit is
/// fenced, so a relay that lost its lock ([`RelayError::LockLost`]) moves nothing.
///
/// ```
/// use es_core::integration::{MemoryBus, Relay};
/// use es_core::{CommandContext, Event, MemoryStore, NewEvent, StreamKey};
/// use es_core::{EventStore, ExpectedVersion};
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum OrderEvent { Placed { total_cents: i64 } }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let placed = NewEvent::encode(&OrderEvent::Placed { total_cents: 1250 }, &CommandContext::new().metadata())?;
/// store.append(StreamKey::new("order", "o-1"), ExpectedVersion::Any, vec![placed]).await?;
///
/// let bus = MemoryBus::new();
/// let mut relay = Relay::new(store, bus.clone(), "orders").publish_only::<OrderEvent>();
/// let summary = relay.publish_pending().await?;
/// assert_eq!(summary.published, 1);
/// assert_eq!(bus.published()[0].subject, "es.order.Placed");
/// assert_eq!(relay.lag().await?.behind, 0);
/// # Ok(())
/// # }
/// ```
pub struct Relay<S: ProjectionStore, P: Publisher> {
    store: S,
    publisher: P,
    name: String,
    prefix: String,
    tenant: Option<Tenant>,
    batch_size: usize,
    max_in_flight: usize,
    retry: RetryPolicy,
    idle_timeout: Duration,
    rules: Vec<Rule>,
    lock: Option<S::Lock>,
}

impl<S: ProjectionStore, P: Publisher> fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("tenant", &self.tenant)
            .field("batch_size", &self.batch_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The outcome of publishing one batch.
struct BatchOutcome {
    /// The last position whose event and every earlier one are done (acknowledged or skipped).
    done: Position,
    published: u64,
    skipped: u64,
    failure: Option<Failure>,
}

enum Failure {
    Broker(BrokerError),
    Rule {
        position: Position,
        event_type: String,
        error: RuleError,
    },
}

impl<S: ProjectionStore, P: Publisher> Relay<S, P> {
    /// A relay named `name` publishing every event of every tenant under the subject prefix
    /// `es`, in batches of 500 with up to 256 acknowledgements in flight, retrying an
    /// unavailable broker or store per [`RetryPolicy::default`].
    pub fn new(store: S, publisher: P, name: impl Into<String>) -> Self {
        Self {
            store,
            publisher,
            name: name.into(),
            prefix: "es".to_owned(),
            tenant: None,
            batch_size: 500,
            max_in_flight: 256,
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(5),
            rules: Vec::new(),
            lock: None,
        }
    }

    /// Sets the subject prefix (see [`subject`](super::subject)); default `es`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Publishes the events of `tenant` only; the checkpoint and lock are kept under
    /// `relay:<name>@<tenant>`, apart from other tenants' relays of the same name.
    pub fn for_tenant(mut self, tenant: Tenant) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets how many events are read at a time (at least 1); the checkpoint is committed after
    /// each batch, at the last event acknowledged with every one before it (acknowledgements
    /// stay in flight from one batch to the next; at the end of the log all are awaited).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets how many published messages may await their acknowledgement at once (at least 1).
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Sets how an unavailable broker or store is retried: [`publish_pending`](Self::publish_pending)
    /// gives up after `max_attempts` failures in a row, [`run`](Self::run) never does; waits
    /// double from `initial_backoff` to `max_backoff`.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            max_attempts: retry.max_attempts.max(1),
            ..retry
        };
        self
    }

    /// Sets how long [`run`](Self::run) waits for new events before looking anyway.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Publishes the events `E` knows (by name or alias), as stored. Rules are tried in the
    /// order they were added; once a rule is added, events no rule knows are skipped.
    pub fn publish_only<E: Event>(mut self) -> Self {
        self.rules.push(Box::new(|event: &RecordedEvent| {
            if E::knows(&event.event_type) {
                Routed::PublishStored
            } else {
                Routed::NotMine
            }
        }));
        self
    }

    /// Publishes the events `D` knows as integration events `I`: `map` is given the decoded
    /// domain event and its envelope and returns the integration event, or `None` to publish
    /// nothing for it.
    ///
    /// The message carries `I`'s event type, schema version and encoded payload, and the
    /// domain event's stream, position, time and metadata. Its [`headers::MSG_ID`](super::headers::MSG_ID) and
    /// [`headers::EVENT_ID`](super::headers::EVENT_ID) are a UUIDv5 of the domain event id and `I`'s type name, the same
    /// on every publish. A domain event that does not decode stops the relay
    /// ([`RelayError::Decode`]), as does an integration event that does not encode.
    pub fn map<D: Event, I: Event>(
        mut self,
        map: impl Fn(&D, &RecordedEvent) -> Option<I> + Send + Sync + 'static,
    ) -> Self {
        self.rules.push(Box::new(move |event: &RecordedEvent| {
            if !D::knows(&event.event_type) {
                return Routed::NotMine;
            }
            let domain = match event.decode::<D>() {
                Ok(domain) => domain,
                Err(error) => return Routed::Failed(RuleError::Decode(error)),
            };
            let Some(integration) = map(&domain, event) else {
                return Routed::Skip;
            };
            let event_type = integration.event_type();
            match integration.encode() {
                Ok(payload) => Routed::Publish(RecordedEvent {
                    event_id: integration_event_id(event.event_id, event_type),
                    event_type: event_type.to_owned(),
                    schema_version: integration.schema_version(),
                    payload,
                    ..event.clone()
                }),
                Err(source) => Routed::Failed(RuleError::Encode { event_type, source }),
            }
        }));
        self
    }

    /// The key of the relay's checkpoint and lock: `relay:<name>`, or `relay:<name>@<tenant>`.
    pub fn key(&self) -> String {
        self.scope().key(&format!("relay:{}", self.name))
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The publisher.
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    fn scope(&self) -> LogScope<'_> {
        LogScope::of(self.tenant.as_ref())
    }

    fn store_error(&self, source: StoreError) -> RelayError {
        relay_store_error(self.key(), source)
    }

    /// The relay's checkpoint: the position of the last event it is done with
    /// ([`Position::START`] before its first commit).
    pub fn checkpoint(&self) -> impl Future<Output = Result<Position, RelayError>> + Send + '_ {
        // The future borrows the store alone, so it is `Send` whatever the store's lock type.
        let store = &self.store;
        let key = self.key();
        async move {
            store
                .load_checkpoint(&key)
                .await
                .map(|checkpoint| checkpoint.unwrap_or(Position::START))
                .map_err(|source| relay_store_error(key.clone(), source))
        }
    }

    /// The checkpoint and how many events of the relay's scope follow it.
    pub fn lag(&self) -> impl Future<Output = Result<RelayLag, RelayError>> + Send + '_ {
        let store = &self.store;
        let key = self.key();
        let scope = self.scope();
        let checkpoint = self.checkpoint();
        async move {
            let checkpoint = checkpoint.await?;
            let behind = store
                .count_after(scope, checkpoint)
                .await
                .map_err(|source| relay_store_error(key.clone(), source))?;
            tracing::debug!(relay = %key, %checkpoint, behind, "relay lag");
            Ok(RelayLag { checkpoint, behind })
        }
    }

    /// Publishes every event after the checkpoint, up to the head of the log as it is when each
    /// batch is read, then returns. Takes the relay's lock for the time it runs.
    pub async fn publish_pending(&mut self) -> Result<RelaySummary, RelayError> {
        self.acquire().await?;
        let result = self
            .catch_up(pin!(std::future::pending::<()>()), false)
            .await;
        self.release().await;
        let summary = result?.0;
        let behind = self
            .store
            .count_after(self.scope(), summary.checkpoint)
            .await
            .map_err(|e| self.store_error(e))?;
        tracing::info!(
            relay = %self.key(),
            published = summary.published,
            skipped = summary.skipped,
            behind,
            checkpoint = %summary.checkpoint,
            "relay caught up"
        );
        Ok(summary)
    }

    /// Catches up, then publishes new events as they are appended, until `shutdown` completes
    /// (checked between batches and while waiting); returns the checkpoint reached. An
    /// unavailable broker or store is retried with backoff for as long as it takes.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Position, RelayError> {
        self.acquire().await?;
        let result = self.run_locked(shutdown).await;
        self.release().await;
        result
    }

    async fn run_locked(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Position, RelayError> {
        let mut shutdown = pin!(shutdown);
        let mut failures = 0u32;
        loop {
            let (summary, stopped) = match self.catch_up(shutdown.as_mut(), true).await {
                Ok(caught_up) => {
                    failures = 0;
                    caught_up
                }
                // Loading the checkpoint failed: the only store error `catch_up` passes on
                // that retrying may mend.
                Err(RelayError::Store { source, .. }) if source.is_transient() => {
                    failures += 1;
                    tracing::warn!(relay = %self.key(), error = %source, failures, "relay could not read its checkpoint; retrying");
                    if self.pause(failures, shutdown.as_mut()).await {
                        return self.checkpoint().await;
                    }
                    continue;
                }
                Err(error) => return Err(error),
            };
            if stopped {
                return Ok(summary.checkpoint);
            }
            if summary.published > 0 {
                let behind = self
                    .store
                    .count_after(self.scope(), summary.checkpoint)
                    .await
                    .unwrap_or(0);
                tracing::info!(
                    relay = %self.key(),
                    published = summary.published,
                    behind,
                    checkpoint = %summary.checkpoint,
                    "relay published"
                );
            }
            let wait = pin!(self.store.wait_for_events(
                self.scope(),
                summary.checkpoint,
                self.idle_timeout
            ));
            match futures_util::future::select(shutdown.as_mut(), wait).await {
                Either::Left(((), _)) => return Ok(summary.checkpoint),
                Either::Right((Ok(()), _)) => {}
                Either::Right((Err(error), _)) if error.is_transient() => {
                    tracing::warn!(relay = %self.key(), %error, "relay could not wait for events; retrying");
                    tokio::time::sleep(self.retry.backoff(1)).await;
                }
                Either::Right((Err(error), _)) => return Err(self.store_error(error)),
            }
        }
    }

    async fn acquire(&mut self) -> Result<(), RelayError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let lock = self
            .store
            .try_lock(&self.key())
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or_else(|| RelayError::AlreadyRunning { relay: self.key() })?;
        self.lock = Some(lock);
        Ok(())
    }

    async fn release(&mut self) {
        if let Some(lock) = self.lock.take()
            && let Err(error) = self.store.release(lock).await
        {
            tracing::warn!(relay = %self.key(), %error, "failed to release the relay lock; it goes when its connection or lease does");
        }
    }

    /// Publishes batches from the checkpoint until the log is exhausted, retrying transient
    /// failures from the last checkpoint; `persistent` retries them forever. The summary, and
    /// whether `shutdown` completed.
    async fn catch_up<F: Future<Output = ()>>(
        &mut self,
        mut shutdown: Pin<&mut F>,
        persistent: bool,
    ) -> Result<(RelaySummary, bool), RelayError> {
        let mut summary = RelaySummary {
            published: 0,
            skipped: 0,
            checkpoint: self.checkpoint().await?,
        };
        let mut failures = 0u32;
        // Acknowledgements stay in flight from one page to the next; the checkpoint follows the
        // last event acknowledged with every one before it (`done`), while reading goes on
        // after the last event handed to the broker (`cursor`).
        let mut in_flight: InFlight<P::Ack> = VecDeque::new();
        let mut unacked = 0usize;
        let mut done = summary.checkpoint;
        let mut cursor = summary.checkpoint;
        // The page after the one being published, read while its acknowledgements are awaited.
        let mut read_ahead: Option<(Position, Vec<RecordedEvent>)> = None;
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                // What is in flight is settled and kept, if the broker and store allow; else
                // it is published again from the checkpoint by the next relay.
                let mut outcome = BatchOutcome {
                    done,
                    published: 0,
                    skipped: 0,
                    failure: None,
                };
                if settle(&mut in_flight, &mut unacked, 0, &mut outcome)
                    .await
                    .is_ok()
                    && outcome.done > summary.checkpoint
                    && self.commit_checkpoint(outcome.done).await.is_ok()
                {
                    summary.checkpoint = outcome.done;
                }
                summary.published += outcome.published;
                summary.skipped += outcome.skipped;
                return Ok((summary, true));
            }
            let ahead = read_ahead
                .take()
                .filter(|(after, _)| *after == cursor)
                .map(|(_, batch)| Ok(batch));
            let read = match ahead {
                Some(batch) => batch,
                None => {
                    self.store
                        .read_all(self.scope(), cursor, self.batch_size)
                        .await
                }
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(error) if error.is_transient() => {
                    failures += 1;
                    if !persistent && failures >= self.retry.max_attempts {
                        return Err(self.store_error(error));
                    }
                    tracing::warn!(relay = %self.key(), %error, failures, "relay could not read the log; retrying");
                    if self.pause(failures, shutdown.as_mut()).await {
                        return Ok((summary, true));
                    }
                    continue;
                }
                Err(error) => return Err(self.store_error(error)),
            };
            if batch.is_empty() && in_flight.is_empty() && done == summary.checkpoint {
                return Ok((summary, false));
            }
            // At the end of the log every acknowledgement is awaited, so that the checkpoint
            // reaches the head.
            let end_of_log = batch.len() < self.batch_size;
            let span = tracing::debug_span!(
                "es.relay.batch",
                relay = %self.key(),
                events = batch.len(),
                published = tracing::field::Empty,
            );
            // A full page may have more behind it: read it while this one is published.
            let next = (!end_of_log).then(|| {
                let store = self.store.clone();
                let tenant = self.tenant.clone();
                let after = batch.last().map_or(cursor, |e| e.position);
                let batch_size = self.batch_size;
                async move {
                    let scope = LogScope::of(tenant.as_ref());
                    (after, store.read_all(scope, after, batch_size).await)
                }
            });
            let publish =
                self.publish_batch(&batch, &mut in_flight, &mut unacked, done, end_of_log);
            let (outcome, next) = match next {
                Some(next) => {
                    let (outcome, next) = futures_util::future::join(publish, next).await;
                    (outcome, Some(next))
                }
                None => (publish.await, None),
            };
            // A failed read ahead is read again in its turn, where its error is handled.
            if let Some((after, Ok(next))) = next {
                read_ahead = Some((after, next));
            }
            span.record("published", outcome.published);
            drop(span);
            summary.published += outcome.published;
            summary.skipped += outcome.skipped;
            done = outcome.done;
            if outcome.failure.is_none() {
                cursor = batch.last().map_or(cursor, |e| e.position);
            } else {
                // Published again from the last event acknowledged with all before it.
                cursor = done;
                read_ahead = None;
            }
            if outcome.done > summary.checkpoint {
                match self.commit_checkpoint(outcome.done).await {
                    Ok(()) => {
                        summary.checkpoint = outcome.done;
                        failures = 0;
                    }
                    Err(RelayError::Store { source, .. }) if source.is_transient() => {
                        // Published but not committed: published again from the checkpoint,
                        // where the broker drops the duplicates.
                        failures += 1;
                        if !persistent && failures >= self.retry.max_attempts {
                            return Err(self.store_error(source));
                        }
                        tracing::warn!(relay = %self.key(), error = %source, failures, "relay could not commit its checkpoint; retrying");
                        if self.pause(failures, shutdown.as_mut()).await {
                            return Ok((summary, true));
                        }
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            match outcome.failure {
                None => {}
                Some(Failure::Rule {
                    position,
                    event_type,
                    error,
                }) => {
                    let relay = self.key();
                    return Err(match error {
                        RuleError::Decode(source) => RelayError::Decode {
                            relay,
                            position,
                            event_type,
                            source,
                        },
                        RuleError::Encode { event_type, source } => RelayError::Encode {
                            relay,
                            position,
                            event_type: event_type.to_owned(),
                            source,
                        },
                    });
                }
                Some(Failure::Broker(error)) => {
                    failures += 1;
                    if !error.is_transient() || (!persistent && failures >= self.retry.max_attempts)
                    {
                        return Err(RelayError::Broker {
                            relay: self.key(),
                            source: error,
                        });
                    }
                    tracing::warn!(
                        relay = %self.key(),
                        %error,
                        failures,
                        checkpoint = %summary.checkpoint,
                        "relay could not publish; retrying from its checkpoint"
                    );
                    if self.pause(failures, shutdown.as_mut()).await {
                        return Ok((summary, true));
                    }
                }
            }
        }
    }

    /// Waits the backoff after `failures` failures; `true` if `shutdown` completed meanwhile.
    async fn pause<F: Future<Output = ()>>(
        &mut self,
        failures: u32,
        shutdown: Pin<&mut F>,
    ) -> bool {
        let sleep = pin!(tokio::time::sleep(self.retry.backoff(failures)));
        matches!(
            futures_util::future::select(shutdown, sleep).await,
            Either::Left(_)
        )
    }

    /// Publishes a batch, pipelined behind what is already `in_flight` (done up to `from`);
    /// awaits every acknowledgement at the end if `drain`, else leaves up to `max_in_flight`
    /// in flight for the next batch. Stops at the first failure, with nothing left in flight.
    async fn publish_batch(
        &mut self,
        batch: &[RecordedEvent],
        in_flight: &mut InFlight<P::Ack>,
        unacked: &mut usize,
        from: Position,
        drain: bool,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome {
            done: from,
            published: 0,
            skipped: 0,
            failure: None,
        };
        for event in batch {
            let routed = self.route(event);
            let message = match routed {
                Routed::NotMine | Routed::Skip => {
                    in_flight.push_back((event.position, None));
                    continue;
                }
                Routed::PublishStored => Message::from_event(&self.prefix, event),
                Routed::Publish(published) => Message::from_event(&self.prefix, &published),
                Routed::Failed(error) => {
                    if let Err(error) = settle(in_flight, unacked, 0, &mut outcome).await {
                        outcome.failure = Some(Failure::Broker(error));
                    } else {
                        outcome.failure = Some(Failure::Rule {
                            position: event.position,
                            event_type: event.event_type.clone(),
                            error,
                        });
                    }
                    return outcome;
                }
            };
            if let Err(error) =
                settle(in_flight, unacked, self.max_in_flight - 1, &mut outcome).await
            {
                outcome.failure = Some(Failure::Broker(error));
                return outcome;
            }
            match self.publisher.publish(message).await {
                Ok(ack) => {
                    in_flight.push_back((event.position, Some(Box::pin(ack))));
                    *unacked += 1;
                }
                Err(error) => {
                    // What was published before may still be acknowledged: keep that progress.
                    let earlier = settle(in_flight, unacked, 0, &mut outcome).await;
                    outcome.failure = Some(Failure::Broker(earlier.err().unwrap_or(error)));
                    return outcome;
                }
            }
        }
        let keep = if drain { 0 } else { self.max_in_flight };
        if let Err(error) = settle(in_flight, unacked, keep, &mut outcome).await {
            outcome.failure = Some(Failure::Broker(error));
        }
        outcome
    }

    fn route(&self, event: &RecordedEvent) -> Routed {
        if self.rules.is_empty() {
            return Routed::PublishStored;
        }
        for rule in &self.rules {
            match rule(event) {
                Routed::NotMine => continue,
                routed => return routed,
            }
        }
        Routed::NotMine
    }

    async fn commit_checkpoint(&mut self, position: Position) -> Result<(), RelayError> {
        let key = self.key();
        let mut transaction = self
            .store
            .begin(self.scope())
            .await
            .map_err(|e| self.store_error(e))?;
        if let Some(lock) = &self.lock {
            self.store
                .fence(&mut transaction, lock)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        self.store
            .save_checkpoint(&mut transaction, &key, position)
            .await
            .map_err(|e| self.store_error(e))?;
        self.store
            .commit(transaction)
            .await
            .map_err(|e| self.store_error(e))
    }
}

fn relay_store_error(relay: String, source: StoreError) -> RelayError {
    match source {
        StoreError::LockLost { .. } => RelayError::LockLost { relay },
        source => RelayError::Store { relay, source },
    }
}

/// Events in log order with their pending acknowledgement (`None`: skipped).
type InFlight<A> = VecDeque<(Position, Option<Pin<Box<A>>>)>;

/// Awaits acknowledgements in order until at most `keep` are outstanding, moving
/// `outcome.done` past each event acknowledged or skipped (and counting them); stops at the
/// first failed one.
async fn settle<A: Future<Output = Result<(), BrokerError>>>(
    in_flight: &mut InFlight<A>,
    unacked: &mut usize,
    keep: usize,
    outcome: &mut BatchOutcome,
) -> Result<(), BrokerError> {
    loop {
        match in_flight.front_mut() {
            None => return Ok(()),
            Some((position, None)) => {
                outcome.done = *position;
                outcome.skipped += 1;
                in_flight.pop_front();
            }
            Some((position, Some(ack))) => {
                if *unacked <= keep {
                    return Ok(());
                }
                let position = *position;
                let acked = ack.await;
                in_flight.pop_front();
                *unacked -= 1;
                match acked {
                    Ok(()) => {
                        outcome.done = position;
                        outcome.published += 1;
                    }
                    Err(error) => {
                        in_flight.clear();
                        *unacked = 0;
                        return Err(error);
                    }
                }
            }
        }
    }
}

/// The id of the integration event `event_type` made from the domain event `domain_event_id`:
/// a UUIDv5 in the domain event id's namespace, the same on every publish.
pub fn integration_event_id(domain_event_id: Uuid, event_type: &str) -> Uuid {
    Uuid::new_v5(&domain_event_id, event_type.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// A relay on any store and publisher runs in a spawned task.
    #[allow(dead_code)]
    fn futures_are_send<S: ProjectionStore, P: Publisher>(relay: &mut Relay<S, P>) {
        is_send(&relay.publish_pending());
        is_send(&relay.run(async {}));
        is_send(&relay.lag());
    }
}
