//! [`MemoryBus`]: a broker in process memory, for tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Ready;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::broker::{
    BrokerError, DeadLetterQueue, DeadLetteredMessage, Delivery, Message, Publisher, Subscription,
};
use super::headers;

/// The duplicate window unless set: two minutes, as JetStream's default.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The ack wait unless set: thirty seconds, as JetStream's default.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// [`MemoryBus`]: a broker in process memory, for unit tests of relays, handlers and consumers
/// without a server. It behaves like NATS JetStream where the loops can tell: a
/// [`Publisher`] that drops a second message with the same [`headers::MSG_ID`] within a
/// duplicate window, durable subscriptions by name with a subject filter (NATS wildcards `*`
/// and `>`) that count attempts, redeliver after [`Delivery::retry_after`]'s delay or, for a
/// delivery dropped without an answer, after an ack wait, and a [`DeadLetterQueue`].
///
/// ```
/// use std::time::Duration;
/// use es_core::integration::{Delivery, MemoryBus, Message, Publisher, Subscription, headers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::integration::BrokerError> {
/// let bus = MemoryBus::new();
/// let mut billing = bus.subscribe("billing", "es.order.>")?;
/// let message = |id: &str| Message {
///     subject: "es.order.Placed".into(),
///     headers: vec![(headers::MSG_ID.into(), id.into())],
///     payload: b"{}".to_vec(),
/// };
/// bus.publish(message("m-1")).await?.await?;
/// bus.publish(message("m-1")).await?.await?; // a duplicate: dropped
/// assert_eq!(bus.published().len(), 1);
///
/// let delivery = billing.next(Duration::from_secs(1)).await?.expect("delivered");
/// assert_eq!(delivery.attempt(), 1);
/// delivery.retry_after(Duration::ZERO).await?;
/// let again = billing.next(Duration::from_secs(1)).await?.expect("delivered again");
/// assert_eq!(again.attempt(), 2);
/// again.ack().await?;
/// assert_eq!(billing.pending().await?, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken after every publish, retry and redelivery change.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Every message kept, by sequence from 1.
    log: Vec<Message>,
    /// Message ids seen, with when; older than the window are forgotten.
    seen: HashMap<String, Instant>,
    seen_order: VecDeque<(Instant, String)>,
    duplicate_window: Duration,
    ack_wait: Duration,
    durables: HashMap<String, Durable>,
    dead_letters: Vec<DeadLetteredMessage>,
    last_dead_letter: u64,
    /// Publishes that will fail as unavailable (for tests of retries).
    failing_publishes: u32,
}

impl Default for State {
    fn default() -> Self {
        Self {
            log: Vec::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            ack_wait: DEFAULT_ACK_WAIT,
            durables: HashMap::new(),
            dead_letters: Vec::new(),
            last_dead_letter: 0,
            failing_publishes: 0,
        }
    }
}

/// A durable subscription's state, kept by the bus across subscribe calls.
#[derive(Debug)]
struct Durable {
    filter: Vec<String>,
    /// The index in the log of the next message not yet delivered.
    cursor: usize,
    /// Delivered and not acknowledged, by log index.
    outstanding: BTreeMap<usize, Outstanding>,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// Deliveries so far.
    deliveries: u32,
    /// When it is delivered again if not acknowledged.
    redeliver_at: Instant,
}

impl MemoryBus {
    /// An empty bus with the default duplicate window and ack wait.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how long a message id is remembered for de-duplication.
    pub fn with_duplicate_window(self, window: Duration) -> Self {
        self.state().duplicate_window = window;
        self
    }

    /// Sets how long a delivery may stay unanswered before it is delivered again.
    pub fn with_ack_wait(self, ack_wait: Duration) -> Self {
        self.state().ack_wait = ack_wait;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every message the bus kept (duplicates dropped), in publish order.
    pub fn published(&self) -> Vec<Message> {
        self.state().log.clone()
    }

    /// Makes the next `count` publishes fail with [`BrokerError::Unavailable`], as a broker
    /// that cannot be reached: for tests of retries.
    pub fn fail_next_publishes(&self, count: u32) {
        self.state().failing_publishes = count;
    }

    /// The durable subscription `durable`, created on first use with the subject `filter`
    /// (NATS syntax: `*` one token, `>` the rest); later calls resume where it stands.
    /// [`BrokerError::Rejected`] when the filter is not a valid subject filter or differs from
    /// the durable's.
    pub fn subscribe(
        &self,
        durable: &str,
        filter: &str,
    ) -> Result<MemorySubscription, BrokerError> {
        let tokens = parse_filter(filter)?;
        let mut state = self.state();
        let existing = state
            .durables
            .entry(durable.to_owned())
            .or_insert_with(|| Durable {
                filter: tokens.clone(),
                cursor: 0,
                outstanding: BTreeMap::new(),
            });
        if existing.filter != tokens {
            return Err(BrokerError::Rejected {
                message: format!(
                    "durable subscription `{durable}` exists with filter `{}`, not `{filter}`",
                    existing.filter.join(".")
                ),
            });
        }
        Ok(MemorySubscription {
            bus: self.clone(),
            durable: durable.to_owned(),
        })
    }

    /// Keeps `message` unless its id was seen within the window; whether it was kept.
    fn append(&self, message: Message) -> Result<bool, BrokerError> {
        let mut state = self.state();
        if state.failing_publishes > 0 {
            state.failing_publishes -= 1;
            return Err(BrokerError::Unavailable {
                message: "the in-memory bus was told to fail this publish".to_owned(),
                source: None,
            });
        }
        let now = Instant::now();
        let window = state.duplicate_window;
        while let Some((at, _)) = state.seen_order.front()
            && now.saturating_duration_since(*at) > window
        {
            if let Some((at, id)) = state.seen_order.pop_front()
                && state.seen.get(&id) == Some(&at)
            {
                state.seen.remove(&id);
            }
        }
        if let Some(id) = message.header(headers::MSG_ID) {
            if state.seen.contains_key(id) {
                return Ok(false);
            }
            let id = id.to_owned();
            state.seen.insert(id.clone(), now);
            state.seen_order.push_back((now, id));
        }
        state.log.push(message);
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(true)
    }
}

impl Publisher for MemoryBus {
    /// Already resolved: the bus keeps the message before `publish` returns.
    type Ack = Ready<Result<(), BrokerError>>;

    async fn publish(&self, message: Message) -> Result<Self::Ack, BrokerError> {
        self.append(message)?;
        Ok(std::future::ready(Ok(())))
    }
}

impl DeadLetterQueue for MemoryBus {
    async fn send(&self, letter: &DeadLetteredMessage) -> Result<(), BrokerError> {
        let mut state = self.state();
        state.last_dead_letter += 1;
        let mut letter = letter.clone();
        letter.id = state.last_dead_letter.to_string();
        state.dead_letters.push(letter);
        Ok(())
    }

    async fn list(&self, consumer: &str) -> Result<Vec<DeadLetteredMessage>, BrokerError> {
        Ok(self
            .state()
            .dead_letters
            .iter()
            .filter(|letter| letter.consumer == consumer)
            .cloned()
            .collect())
    }

    /// Publishes the original message with a new [`headers::MSG_ID`] (outside the duplicate
    /// window's reach; [`headers::EVENT_ID`] is unchanged), then removes the letter.
    async fn redrive(&self, id: &str) -> Result<bool, BrokerError> {
        let letter = {
            let state = self.state();
            match state.dead_letters.iter().find(|letter| letter.id == id) {
                Some(letter) => letter.clone(),
                None => return Ok(false),
            }
        };
        let mut message = letter.message;
        message.headers.retain(|(name, _)| name != headers::MSG_ID);
        message
            .headers
            .insert(0, (headers::MSG_ID.to_owned(), Uuid::new_v4().to_string()));
        self.append(message)?;
        self.state().dead_letters.retain(|letter| letter.id != id);
        Ok(true)
    }
}

/// A durable subscription of a [`MemoryBus`]; see [`MemoryBus::subscribe`].
#[derive(Debug)]
pub struct MemorySubscription {
    bus: MemoryBus,
    durable: String,
}

/// A delivery of a [`MemorySubscription`]. Dropped without [`ack`](Delivery::ack) or
/// [`retry_after`](Delivery::retry_after), it is delivered again after the bus's ack wait.
#[derive(Debug)]
pub struct MemoryDelivery {
    bus: MemoryBus,
    durable: String,
    index: usize,
    attempt: u32,
    message: Message,
}

impl MemorySubscription {
    /// The next delivery ready now, if any; else when the next redelivery is due.
    fn poll(&self) -> Result<Result<MemoryDelivery, Option<Instant>>, BrokerError> {
        let mut state = self.bus.state();
        let now = Instant::now();
        let ack_wait = state.ack_wait;
        let State { log, durables, .. } = &mut *state;
        let durable = durables
            .get_mut(&self.durable)
            .ok_or_else(|| BrokerError::Rejected {
                message: format!("durable subscription `{}` is gone", self.durable),
            })?;
        let due = durable
            .outstanding
            .iter()
            .find(|(_, outstanding)| outstanding.redeliver_at <= now)
            .map(|(index, _)| *index);
        let index = match due {
            Some(index) => Some(index),
            None => {
                let found = log[durable.cursor..]
                    .iter()
                    .position(|message| matches(&durable.filter, &message.subject))
                    .map(|offset| durable.cursor + offset);
                durable.cursor = found.map_or(log.len(), |index| index + 1);
                found
            }
        };
        let Some(index) = index else {
            return Ok(Err(durable
                .outstanding
                .values()
                .map(|outstanding| outstanding.redeliver_at)
                .min()));
        };
        let outstanding = durable.outstanding.entry(index).or_insert(Outstanding {
            deliveries: 0,
            redeliver_at: now,
        });
        outstanding.deliveries = outstanding.deliveries.saturating_add(1);
        outstanding.redeliver_at = later(now, ack_wait);
        Ok(Ok(MemoryDelivery {
            bus: self.bus.clone(),
            durable: self.durable.clone(),
            index,
            attempt: outstanding.deliveries,
            message: log[index].clone(),
        }))
    }
}

impl Subscription for MemorySubscription {
    type Delivery = MemoryDelivery;

    async fn next(&mut self, timeout: Duration) -> Result<Option<MemoryDelivery>, BrokerError> {
        let deadline = later(Instant::now(), timeout);
        loop {
            let changed = self.bus.shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let wake = match self.poll()? {
                Ok(delivery) => return Ok(Some(delivery)),
                Err(redelivery) => redelivery.map_or(deadline, |at| at.min(deadline)),
            };
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let _ = tokio::time::timeout_at(wake, changed).await;
        }
    }

    async fn pending(&mut self) -> Result<u64, BrokerError> {
        let state = self.bus.state();
        let durable = state
            .durables
            .get(&self.durable)
            .ok_or_else(|| BrokerError::Rejected {
                message: format!("durable subscription `{}` is gone", self.durable),
            })?;
        let waiting = state.log[durable.cursor..]
            .iter()
            .filter(|message| matches(&durable.filter, &message.subject))
            .count();
        Ok((waiting + durable.outstanding.len()) as u64)
    }
}

impl MemoryDelivery {
    fn settle(&self, redeliver_after: Option<Duration>) {
        let mut state = self.bus.state();
        if let Some(durable) = state.durables.get_mut(&self.durable) {
            match redeliver_after {
                None => {
                    durable.outstanding.remove(&self.index);
                }
                Some(delay) => {
                    if let Some(outstanding) = durable.outstanding.get_mut(&self.index) {
                        outstanding.redeliver_at = later(Instant::now(), delay);
                    }
                }
            }
        }
        drop(state);
        self.bus.shared.changed.notify_waiters();
    }
}

impl Delivery for MemoryDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    async fn ack(self) -> Result<(), BrokerError> {
        self.settle(None);
        Ok(())
    }

    async fn retry_after(self, delay: Duration) -> Result<(), BrokerError> {
        self.settle(Some(delay));
        Ok(())
    }
}

/// `after` from `now`, or a century from now for a wait longer than the clock can count.
fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// The tokens of a subject filter; [`BrokerError::Rejected`] when it is not one.
fn parse_filter(filter: &str) -> Result<Vec<String>, BrokerError> {
    let invalid = |why: &str| BrokerError::Rejected {
        message: format!(
            "`{}` is not a subject filter: {why}",
            crate::stream::shown(filter)
        ),
    };
    let tokens: Vec<String> = filter.split('.').map(str::to_owned).collect();
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(invalid("it has an empty token"));
        }
        if token.bytes().any(|byte| byte.is_ascii_whitespace()) {
            return Err(invalid("it holds whitespace"));
        }
        if token == ">" && index + 1 != tokens.len() {
            return Err(invalid("`>` may only be the last token"));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(invalid("a wildcard must be a whole token"));
        }
    }
    Ok(tokens)
}

/// Whether `subject` matches the filter's tokens.
fn matches(filter: &[String], subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter {
        match (token.as_str(), subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(part)) if literal == part => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subject: &str, id: &str) -> Message {
        Message {
            subject: subject.to_owned(),
            headers: vec![(headers::MSG_ID.to_owned(), id.to_owned())],
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn filters_match_like_nats() {
        let filter = |f: &str| parse_filter(f).unwrap();
        assert!(matches(&filter("es.order.>"), "es.order.Placed"));
        assert!(matches(&filter("es.order.>"), "es.order.a.b"));
        assert!(!matches(&filter("es.order.>"), "es.order"));
        assert!(matches(&filter("es.*.Placed"), "es.cart.Placed"));
        assert!(!matches(&filter("es.*.Placed"), "es.cart.Shipped"));
        assert!(!matches(&filter("es.order"), "es.order.Placed"));
        assert!(matches(&filter(">"), "anything.at.all"));
        for bad in ["", "es..x", "es.>.x", "es.o*", "es. x"] {
            assert!(parse_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_are_dropped_within_the_window_only() {
        let bus = MemoryBus::new().with_duplicate_window(Duration::from_secs(10));
        bus.publish(message("a.b", "1"))
            .await
            .unwrap()
            .await
            .unwrap();
        bus.publish(message("a.b", "1"))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(bus.published().len(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        bus.publish(message("a.b", "1"))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(bus.published().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_delivery_comes_back_after_the_ack_wait_and_a_retry_after_its_delay() {
        let bus = MemoryBus::new().with_ack_wait(Duration::from_secs(5));
        let mut subscription = bus.subscribe("d", "a.>").unwrap();
        bus.publish(message("a.b", "1"))
            .await
            .unwrap()
            .await
            .unwrap();
        bus.publish(message("x.b", "2"))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(subscription.pending().await.unwrap(), 1);
        let first = subscription.next(Duration::ZERO).await.unwrap().unwrap();
        drop(first);
        assert!(
            subscription
                .next(Duration::from_secs(4))
                .await
                .unwrap()
                .is_none()
        );
        let second = subscription
            .next(Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.attempt(), 2);
        let started = Instant::now();
        second.retry_after(Duration::from_secs(3)).await.unwrap();
        let third = subscription
            .next(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.attempt(), 3);
        assert!(started.elapsed() >= Duration::from_secs(3));
        third.ack().await.unwrap();
        assert_eq!(subscription.pending().await.unwrap(), 0);
        // A durable resumes where it stands; another durable starts from the beginning.
        let mut again = bus.subscribe("d", "a.>").unwrap();
        assert!(again.next(Duration::ZERO).await.unwrap().is_none());
        let mut other = bus.subscribe("e", "a.>").unwrap();
        assert!(other.next(Duration::ZERO).await.unwrap().is_some());
        assert!(bus.subscribe("d", "b.>").is_err());
    }

    #[tokio::test]
    async fn a_redrive_publishes_again_under_a_new_message_id() {
        let bus = MemoryBus::new();
        let original = message("a.b", "m-1");
        bus.publish(original.clone()).await.unwrap().await.unwrap();
        bus.send(&DeadLetteredMessage {
            id: String::new(),
            consumer: "c".into(),
            message: original,
            error: "failed".into(),
            attempts: 5,
            failed_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
        let letters = bus.list("c").await.unwrap();
        assert_eq!(letters.len(), 1);
        assert!(bus.list("other").await.unwrap().is_empty());
        assert!(!bus.redrive("nope").await.unwrap());
        assert!(bus.redrive(&letters[0].id).await.unwrap());
        assert!(bus.list("c").await.unwrap().is_empty());
        let published = bus.published();
        assert_eq!(published.len(), 2);
        assert_ne!(published[1].header(headers::MSG_ID), Some("m-1"));
    }
}
