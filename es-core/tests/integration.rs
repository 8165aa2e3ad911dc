//! Integration events on `MemoryStore` and `MemoryBus`: the relay (order, filters and typed
//! mappings, crashes, one relay per name, broker outages, lag) and the consumer (exactly-once
//! effects through the inbox, retries and dead letters, bad messages, re-drives, upcasting,
//! pending counts).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::integration::{
    BadMessage, BrokerError, Consumer, DeadLetterQueue, DeadLetterReason, InboxStore, MemoryBus,
    Message, MessageError, Outcome, Publisher, Relay, RelayError, Subscription, headers,
    integration_event_id,
};
use es_core::projection::{HandlerError, Projection, ProjectionStore, RetryPolicy};
use es_core::{
    CommandContext, DecodeError, DynStore, Event, EventStore, ExpectedVersion, LogScope,
    MemoryStore, MemoryTransaction, NewEvent, Position, RawJson, RecordedEvent, StoreError,
    StreamKey, Tenant,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Placed {
    pub total_cents: i64,
    pub secret_note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlacedV1 {
    pub cents: i64,
}

impl From<PlacedV1> for Placed {
    fn from(v1: PlacedV1) -> Self {
        Placed {
            total_cents: v1.cents,
            secret_note: String::new(),
        }
    }
}

/// The order service's domain events.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum OrderEvent {
    #[event(version = 2, upcast(1 = PlacedV1))]
    Placed(Placed),
    Audited,
}

/// The order service's public contract.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum OrderPublic {
    OrderPlaced { total_cents: i64 },
}

/// Another aggregate's events, published as stored.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum CustomerEvent {
    Registered { name: String },
}

fn placed(total_cents: i64) -> NewEvent {
    let event = OrderEvent::Placed(Placed {
        total_cents,
        secret_note: "internal".into(),
    });
    NewEvent::encode(&event, &CommandContext::new().metadata()).unwrap()
}

fn raw(event_type: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: RawJson::from_string(payload),
        metadata: RawJson::empty_object(),
    }
}

async fn append(store: &MemoryStore, stream: StreamKey<'_>, events: Vec<NewEvent>) {
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

/// `streams` streams of `per_stream` `Placed` events each, appended interleaved, in two tenants.
async fn seeded(streams: usize, per_stream: usize) -> (MemoryStore, Vec<RecordedEvent>) {
    let store = MemoryStore::new();
    for round in 0..per_stream {
        for stream in 0..streams {
            let tenant = if stream % 2 == 0 { "acme" } else { "globex" };
            let id = format!("o-{stream}");
            let key = StreamKey::new("order", &id).in_tenant(tenant);
            append(&store, key, vec![placed((round * 100 + stream) as i64)]).await;
        }
    }
    let log = store
        .read_all(LogScope::AllTenants, Position::START, usize::MAX)
        .await
        .unwrap();
    (store, log)
}

fn event_ids(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.header(headers::EVENT_ID).unwrap().to_owned())
        .collect()
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

#[tokio::test]
async fn the_relay_publishes_every_event_once_in_log_order() {
    let (store, log) = seeded(5, 7).await;
    let bus = MemoryBus::new();
    let mut relay = Relay::new(store.clone(), bus.clone(), "all")
        .batch_size(4)
        .max_in_flight(3);
    assert_eq!(
        relay.lag().await.unwrap(),
        es_core::integration::RelayLag {
            checkpoint: Position::START,
            behind: 35
        }
    );
    let summary = relay.publish_pending().await.unwrap();
    assert_eq!((summary.published, summary.skipped), (35, 0));
    assert_eq!(summary.checkpoint, log.last().unwrap().position);

    let published = bus.published();
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        event_ids(&published),
        expected,
        "each event once, in log order"
    );
    // Within each stream, versions 1, 2, 3... in order.
    let mut versions: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for message in &published {
        let event = message.to_event().unwrap();
        assert_eq!(message.subject, "es.order.Placed");
        versions
            .entry((event.tenant, event.stream_id))
            .or_default()
            .push(event.stream_version);
    }
    assert_eq!(versions.len(), 5);
    assert!(versions.values().all(|v| *v == (1..=7).collect::<Vec<_>>()));

    // Nothing new: nothing published again; new events follow.
    assert_eq!(relay.publish_pending().await.unwrap().published, 0);
    append(&store, StreamKey::new("order", "o-new"), vec![placed(1)]).await;
    let lag = relay.lag().await.unwrap();
    assert_eq!((lag.checkpoint, lag.behind), (summary.checkpoint, 1));
    assert_eq!(relay.publish_pending().await.unwrap().published, 1);
    assert_eq!(bus.published().len(), 36);
    assert_eq!(relay.lag().await.unwrap().behind, 0);
}

#[tokio::test]
async fn a_relay_scoped_to_a_tenant_publishes_its_events_under_its_own_key() {
    let (store, log) = seeded(4, 2).await;
    let bus = MemoryBus::new();
    let mut relay = Relay::new(store, bus.clone(), "orders")
        .for_tenant(Tenant::new("acme").unwrap())
        .subject_prefix("acme.es");
    assert_eq!(relay.key(), "relay:orders@acme");
    relay.publish_pending().await.unwrap();
    let expected: Vec<String> = log
        .iter()
        .filter(|e| e.tenant == "acme")
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(event_ids(&bus.published()), expected);
    assert!(
        bus.published()
            .iter()
            .all(|m| m.subject == "acme.es.order.Placed"
                && m.header(headers::TENANT) == Some("acme"))
    );
    assert!(
        relay
            .store()
            .load_checkpoint("relay:orders@acme")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        relay.store().load_checkpoint("relay:orders").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn filters_and_typed_mappings_decide_what_becomes_public() {
    let store = MemoryStore::new();
    let order = StreamKey::new("order", "o-1");
    append(&store, order, vec![placed(1250)]).await;
    append(
        &store,
        order,
        vec![NewEvent::encode(&OrderEvent::Audited, &Default::default()).unwrap()],
    )
    .await;
    let registered = NewEvent::encode(
        &CustomerEvent::Registered { name: "Ada".into() },
        &CommandContext::new()
            .with_correlation_id("req-9")
            .metadata(),
    )
    .unwrap();
    append(&store, StreamKey::new("customer", "c-1"), vec![registered]).await;
    append(
        &store,
        StreamKey::new("audit", "a-1"),
        vec![raw("Internal", "{}")],
    )
    .await;
    let log = store
        .read_all(LogScope::AllTenants, Position::START, 100)
        .await
        .unwrap();

    let bus = MemoryBus::new();
    let mut relay = Relay::new(store.clone(), bus.clone(), "public")
        .publish_only::<CustomerEvent>()
        .map::<OrderEvent, OrderPublic>(|event, _envelope| match event {
            OrderEvent::Placed(placed) => Some(OrderPublic::OrderPlaced {
                total_cents: placed.total_cents,
            }),
            OrderEvent::Audited => None,
        });
    let summary = relay.publish_pending().await.unwrap();
    assert_eq!((summary.published, summary.skipped), (2, 2));
    assert_eq!(
        summary.checkpoint, log[3].position,
        "skipped events are passed"
    );

    let published = bus.published();
    assert_eq!(published.len(), 2);
    let mapped = &published[0];
    let expected_id = integration_event_id(log[0].event_id, "OrderPlaced");
    assert_eq!(expected_id, Uuid::new_v5(&log[0].event_id, b"OrderPlaced"));
    assert_eq!(mapped.subject, "es.order.OrderPlaced");
    assert_eq!(
        mapped.header(headers::MSG_ID),
        Some(&*expected_id.to_string())
    );
    assert_eq!(
        mapped.header(headers::EVENT_ID),
        Some(&*expected_id.to_string())
    );
    assert_eq!(mapped.header(headers::SCHEMA_VERSION), Some("1"));
    assert_eq!(
        mapped.header(headers::POSITION),
        Some(&*log[0].position.to_string())
    );
    let payload: serde_json::Value = serde_json::from_slice(&mapped.payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "total_cents": 1250 }));
    assert!(!String::from_utf8_lossy(&mapped.payload).contains("internal"));

    let customer = &published[1];
    assert_eq!(customer.subject, "es.customer.Registered");
    assert_eq!(
        customer.header(headers::EVENT_ID),
        Some(&*log[2].event_id.to_string())
    );
    assert_eq!(customer.payload, log[2].payload.as_str().as_bytes());
    assert_eq!(customer.header(headers::CORRELATION_ID), Some("req-9"));

    // Published again from the start (a lost checkpoint), the mapped event has the same id:
    // the broker drops it as a duplicate.
    let mut again = Relay::new(store, bus.clone(), "public-again")
        .publish_only::<CustomerEvent>()
        .map::<OrderEvent, OrderPublic>(|event, _| match event {
            OrderEvent::Placed(placed) => Some(OrderPublic::OrderPlaced {
                total_cents: placed.total_cents,
            }),
            OrderEvent::Audited => None,
        });
    assert_eq!(again.publish_pending().await.unwrap().published, 2);
    assert_eq!(
        bus.published().len(),
        2,
        "same message ids, dropped as duplicates"
    );
}

#[tokio::test]
async fn a_domain_event_that_does_not_decode_stops_the_mapping_relay_before_it() {
    let store = MemoryStore::new();
    append(&store, StreamKey::new("order", "o-1"), vec![placed(1)]).await;
    let mut broken = raw("Placed", r#"{"total_cents":"many"}"#);
    broken.schema_version = 2;
    append(&store, StreamKey::new("order", "o-2"), vec![broken]).await;
    let bus = MemoryBus::new();
    let mut relay = Relay::new(store.clone(), bus.clone(), "mapped")
        .map::<OrderEvent, OrderPublic>(|event, _| match event {
            OrderEvent::Placed(p) => Some(OrderPublic::OrderPlaced {
                total_cents: p.total_cents,
            }),
            OrderEvent::Audited => None,
        });
    let error = relay.publish_pending().await.unwrap_err();
    assert!(
        matches!(&error, RelayError::Decode { event_type, source: DecodeError::InvalidPayload { .. }, .. } if event_type == "Placed"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("relay `relay:mapped` cannot decode"),
        "{error}"
    );
    assert!(
        !error.to_string().contains("many"),
        "no payload in messages: {error}"
    );
    assert_eq!(
        bus.published().len(),
        1,
        "the event before it was published"
    );
    let first = store
        .read_all(LogScope::AllTenants, Position::START, 1)
        .await
        .unwrap();
    assert_eq!(relay.checkpoint().await.unwrap(), first[0].position);
}

/// Hands messages to the bus, but acknowledges only the first `acks` of them: the others'
/// acknowledgements never come, as with a relay that crashes while they are in flight.
#[derive(Clone)]
struct StallingPublisher {
    bus: MemoryBus,
    acks: usize,
    sent: Arc<AtomicUsize>,
}

impl Publisher for StallingPublisher {
    type Ack = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

    async fn publish(&self, message: Message) -> Result<Self::Ack, BrokerError> {
        let ack = self.bus.publish(message).await?;
        if self.sent.fetch_add(1, Ordering::SeqCst) < self.acks {
            Ok(Box::pin(ack))
        } else {
            Ok(Box::pin(std::future::pending()))
        }
    }
}

#[tokio::test]
async fn a_relay_that_crashes_mid_way_publishes_again_from_its_checkpoint_without_duplicates() {
    let (store, log) = seeded(3, 4).await;
    let bus = MemoryBus::new();
    let stalling = StallingPublisher {
        bus: bus.clone(),
        acks: 4,
        sent: Arc::new(AtomicUsize::new(0)),
    };
    let mut crashing = Relay::new(store.clone(), stalling, "orders")
        .batch_size(3)
        .max_in_flight(2);
    let crashed =
        tokio::time::timeout(Duration::from_millis(200), crashing.publish_pending()).await;
    assert!(
        crashed.is_err(),
        "the relay was stopped while acks were pending"
    );
    drop(crashing);
    // The broker acknowledged the first four events: the checkpoint is at most the fourth
    // (never past an unacknowledged event), and at least the end of the first batch; the broker
    // received more than that.
    let mut relay = Relay::new(store, bus.clone(), "orders");
    let checkpoint = relay.checkpoint().await.unwrap();
    let resumed_after = log
        .iter()
        .position(|e| e.position == checkpoint)
        .expect("the checkpoint is an event's position");
    assert!((2..=3).contains(&resumed_after), "{resumed_after}");
    assert!(bus.published().len() > 4);

    let summary = relay
        .publish_pending()
        .await
        .expect("the crashed relay's lock went with it");
    assert_eq!(
        summary.published as usize,
        log.len() - resumed_after - 1,
        "published again from the checkpoint"
    );
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        event_ids(&bus.published()),
        expected,
        "duplicates dropped by message id, nothing skipped"
    );
}

#[tokio::test]
async fn a_second_relay_of_the_same_name_is_refused() {
    let (store, _) = seeded(2, 2).await;
    let bus = MemoryBus::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut first =
        Relay::new(store.clone(), bus.clone(), "orders").idle_timeout(Duration::from_millis(50));
    let running = tokio::spawn(async move {
        first
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    // The first relay is running once it has published the log.
    for _ in 0..2000 {
        if bus.published().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(bus.published().len(), 4);

    let mut second = Relay::new(store.clone(), bus.clone(), "orders");
    let error = second.publish_pending().await.unwrap_err();
    assert!(
        matches!(&error, RelayError::AlreadyRunning { relay } if relay == "relay:orders"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "relay `relay:orders` is already running elsewhere"
    );
    // Another name, or another tenant's relay of the name, is another relay.
    let mut other = Relay::new(store.clone(), MemoryBus::new(), "audit");
    assert_eq!(other.publish_pending().await.unwrap().published, 4);
    let mut tenant = Relay::new(store.clone(), MemoryBus::new(), "orders")
        .for_tenant(Tenant::new("acme").unwrap());
    assert_eq!(tenant.publish_pending().await.unwrap().published, 2);

    // The running relay tails the log.
    append(&store, StreamKey::new("order", "live"), vec![placed(5)]).await;
    for _ in 0..2000 {
        if bus.published().len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        bus.published().len(),
        5,
        "the running relay published the new event"
    );

    stop.send(()).unwrap();
    let checkpoint = running.await.unwrap().unwrap();
    assert_eq!(checkpoint, second.lag().await.unwrap().checkpoint);
    assert_eq!(
        second.publish_pending().await.unwrap().published,
        0,
        "released on stop"
    );
}

#[tokio::test]
async fn a_relay_that_lost_its_lock_commits_nothing() {
    let (store, _) = seeded(1, 3).await;
    let bus = MemoryBus::new();
    let stalling = StallingPublisher {
        bus: bus.clone(),
        acks: usize::MAX,
        sent: Arc::new(AtomicUsize::new(0)),
    };
    let breaker = store.clone();
    // The lock is broken while the first batch is being published.
    struct Breaking(StallingPublisher, MemoryStore);
    impl Publisher for Breaking {
        type Ack = <StallingPublisher as Publisher>::Ack;
        async fn publish(&self, message: Message) -> Result<Self::Ack, BrokerError> {
            self.1.break_lock("relay:orders");
            self.0.publish(message).await
        }
    }
    let mut relay = Relay::new(store.clone(), Breaking(stalling, breaker), "orders");
    let error = relay.publish_pending().await.unwrap_err();
    assert!(
        matches!(&error, RelayError::LockLost { relay } if relay == "relay:orders"),
        "{error:?}"
    );
    assert_eq!(store.load_checkpoint("relay:orders").await.unwrap(), None);
}

#[tokio::test]
async fn an_unavailable_broker_is_retried_from_the_checkpoint() {
    let (store, log) = seeded(2, 3).await;
    let bus = MemoryBus::new();
    bus.fail_next_publishes(3);
    let mut relay = Relay::new(store.clone(), bus.clone(), "orders")
        .batch_size(2)
        .retry(fast_retry(5));
    let summary = relay.publish_pending().await.unwrap();
    assert_eq!(summary.checkpoint, log.last().unwrap().position);
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(event_ids(&bus.published()), expected);

    // Failing more often than the policy allows in a row: the error, and the checkpoint stays.
    append(&store, StreamKey::new("order", "late"), vec![placed(3)]).await;
    bus.fail_next_publishes(10);
    let error = relay.publish_pending().await.unwrap_err();
    assert!(
        matches!(
            &error,
            RelayError::Broker {
                source: BrokerError::Unavailable { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(relay.lag().await.unwrap().behind, 1);
}

/// Records what it handled through the transaction; fails on the streams told to, as many
/// times as told.
#[derive(Clone, Default)]
struct Ledger {
    handled: Arc<Mutex<Vec<(Uuid, i64)>>>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    calls: Arc<AtomicUsize>,
}

impl Ledger {
    fn fail(&self, stream_id: &str, times: u32) {
        self.failures
            .lock()
            .unwrap()
            .insert(stream_id.to_owned(), times);
    }

    fn handled(&self) -> Vec<(Uuid, i64)> {
        self.handled.lock().unwrap().clone()
    }
}

impl Projection<MemoryStore> for Ledger {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "ledger"
    }

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction,
        event: &OrderEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(left) = self.failures.lock().unwrap().get_mut(&envelope.stream_id)
            && *left > 0
        {
            *left -= 1;
            return Err(format!("the ledger refuses stream {}", envelope.stream_id).into());
        }
        let amount = match event {
            OrderEvent::Placed(placed) => placed.total_cents,
            OrderEvent::Audited => 0,
        };
        let handled = self.handled.clone();
        let id = envelope.event_id;
        transaction.on_commit(move || handled.lock().unwrap().push((id, amount)));
        Ok(())
    }

    async fn reset(&mut self, _: &mut MemoryTransaction) -> Result<(), HandlerError> {
        self.handled.lock().unwrap().clear();
        Ok(())
    }
}

/// A store with published orders, a bus holding them, and a consumer of them.
async fn consumer_of(
    orders: usize,
    ledger: &Ledger,
) -> (
    MemoryBus,
    Vec<RecordedEvent>,
    Consumer<MemoryStore, Ledger, es_core::integration::MemorySubscription, MemoryBus>,
) {
    let (producer, log) = seeded(orders, 1).await;
    let bus = MemoryBus::new();
    let subscription = bus.subscribe("ledger", "es.order.>").unwrap();
    Relay::new(producer, bus.clone(), "orders")
        .publish_pending()
        .await
        .unwrap();
    let consumer = Consumer::new(
        MemoryStore::new(),
        ledger.clone(),
        subscription,
        bus.clone(),
    )
    .retry(fast_retry(3));
    (bus, log, consumer)
}

#[tokio::test]
async fn the_consumer_handles_an_event_once_even_when_it_is_delivered_twice() {
    let ledger = Ledger::default();
    let (bus, log, mut consumer) = consumer_of(3, &ledger).await;
    assert_eq!(consumer.pending().await.unwrap(), 3);
    for _ in 0..3 {
        let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
        assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    }
    assert!(
        consumer
            .process_next(Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(consumer.pending().await.unwrap(), 0);

    // The same event again, past the broker's de-duplication: a new message id, the same
    // event id (a re-publish after the window, a re-drive).
    let mut again = bus.published()[1].clone();
    again.headers.retain(|(name, _)| name != headers::MSG_ID);
    again
        .headers
        .push((headers::MSG_ID.into(), "another-message-id".into()));
    bus.publish(again).await.unwrap().await.unwrap();
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Duplicate)), "{outcome:?}");
    assert_eq!(
        ledger.calls.load(Ordering::SeqCst),
        3,
        "the handler did not run again"
    );
    let handled: Vec<Uuid> = ledger.handled().iter().map(|(id, _)| *id).collect();
    assert_eq!(handled, log.iter().map(|e| e.event_id).collect::<Vec<_>>());
    assert_eq!(consumer.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn a_delivery_dropped_before_its_commit_is_handled_once_when_it_comes_again() {
    let ledger = Ledger::default();
    let (producer, _) = seeded(1, 1).await;
    let bus = MemoryBus::new().with_ack_wait(Duration::from_millis(20));
    let mut subscription = bus.subscribe("ledger", "es.>").unwrap();
    Relay::new(producer, bus.clone(), "orders")
        .publish_pending()
        .await
        .unwrap();
    // A consumer that took the delivery and died: no ack, no retry.
    drop(subscription.next(Duration::ZERO).await.unwrap().unwrap());
    let mut consumer = Consumer::new(
        MemoryStore::new(),
        ledger.clone(),
        subscription,
        bus.clone(),
    );
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!(ledger.handled().len(), 1);
}

/// On tokio's paused clock: the bus's redelivery delays pass only when nothing else is ready,
/// so the order of deliveries is the same on any machine.
#[tokio::test(start_paused = true)]
async fn a_failing_handler_is_retried_then_dead_lettered_while_later_messages_go_on() {
    let ledger = Ledger::default();
    ledger.fail("o-0", u32::MAX);
    ledger.fail("o-1", 2);
    let (bus, log, mut consumer) = consumer_of(4, &ledger).await;
    let mut outcomes = Vec::new();
    while let Some(outcome) = consumer
        .process_next(Duration::from_millis(100))
        .await
        .unwrap()
    {
        outcomes.push(outcome);
    }
    let dead: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::DeadLettered { .. }))
        .collect();
    assert_eq!(dead.len(), 1, "{outcomes:?}");
    assert!(
        matches!(dead[0], Outcome::DeadLettered { reason: DeadLetterReason::Failed { attempts: 3, error } } if error.contains("refuses stream o-0")),
        "{outcomes:?}"
    );
    let retried: Vec<u32> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Retrying { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(
        retried.iter().filter(|a| **a == 1).count(),
        2,
        "{outcomes:?}"
    );
    assert_eq!(
        retried.iter().filter(|a| **a == 2).count(),
        2,
        "{outcomes:?}"
    );
    // The first message failing did not hold back the others: o-2 and o-3 were handled before
    // o-0 gave up, and o-1 on its third delivery.
    let first_dead = outcomes
        .iter()
        .position(|o| matches!(o, Outcome::DeadLettered { .. }))
        .unwrap();
    assert!(
        outcomes[..first_dead]
            .iter()
            .filter(|o| matches!(o, Outcome::Handled))
            .count()
            >= 2,
        "{outcomes:?}"
    );
    let mut handled: Vec<Uuid> = ledger.handled().iter().map(|(id, _)| *id).collect();
    handled.sort();
    let mut expected: Vec<Uuid> = log[1..].iter().map(|e| e.event_id).collect();
    expected.sort();
    assert_eq!(handled, expected);

    let letters = bus.list("ledger").await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.consumer, "ledger");
    assert!(
        letter
            .error
            .contains("failed 3 deliveries: the ledger refuses stream o-0"),
        "{}",
        letter.error
    );
    assert_eq!(letter.message, bus.published()[0]);
    assert_eq!(
        consumer.pending().await.unwrap(),
        0,
        "the dead letter was acknowledged"
    );

    // Re-driven once the handler is fixed: handled, and the queue is empty.
    ledger.fail("o-0", 0);
    assert!(bus.redrive(&letter.id).await.unwrap());
    assert!(bus.list("ledger").await.unwrap().is_empty());
    assert_eq!(consumer.pending().await.unwrap(), 1);
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!(ledger.handled().len(), 4);
    assert!(
        ledger
            .handled()
            .iter()
            .any(|(id, _)| *id == log[0].event_id)
    );
}

#[tokio::test]
async fn each_kind_of_bad_message_is_dead_lettered_at_once_with_a_clear_error() {
    let ledger = Ledger::default();
    let (bus, _, mut consumer) = consumer_of(1, &ledger).await;
    let good = bus.published()[0].clone();
    let variant = |id: &str, change: &dyn Fn(&mut Message)| {
        let mut message = good.clone();
        message.headers.retain(|(name, _)| name != headers::MSG_ID);
        message.headers.push((headers::MSG_ID.into(), id.into()));
        change(&mut message);
        message
    };
    let set = |message: &mut Message, name: &str, value: &str| {
        message.headers.retain(|(key, _)| key != name);
        message.headers.push((name.into(), value.into()));
    };
    let bad = [
        variant("not-json", &|m| {
            m.payload = b"{\"total_cents\": 12".to_vec()
        }),
        variant("missing", &|m| {
            m.headers.retain(|(k, _)| k != headers::STREAM_ID)
        }),
        variant("invalid", &|m| set(m, headers::STREAM_VERSION, "seven")),
        variant("unknown", &|m| set(m, headers::EVENT_TYPE, "Refunded")),
        variant("newer", &|m| set(m, headers::SCHEMA_VERSION, "3")),
        variant("undecodable", &|m| {
            m.payload = br#"{"total_cents":"a lot"}"#.to_vec()
        }),
    ];
    for message in bad {
        bus.publish(message).await.unwrap().await.unwrap();
    }
    // The good message first, then each bad one.
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    let mut reasons = Vec::new();
    for _ in 0..6 {
        match consumer.process_next(Duration::ZERO).await.unwrap() {
            Some(Outcome::DeadLettered {
                reason: DeadLetterReason::BadMessage(bad),
            }) => reasons.push(bad),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }
    assert!(matches!(
        &reasons[0],
        BadMessage::Malformed(MessageError::PayloadNotJson { .. })
    ));
    assert!(
        matches!(&reasons[1], BadMessage::Malformed(MessageError::MissingHeader { name }) if *name == headers::STREAM_ID)
    );
    assert!(
        matches!(&reasons[2], BadMessage::Malformed(MessageError::InvalidHeader { name, .. }) if *name == headers::STREAM_VERSION)
    );
    assert!(
        matches!(&reasons[3], BadMessage::Undecodable(DecodeError::UnknownType { event_type }) if event_type == "Refunded")
    );
    assert!(matches!(
        &reasons[4],
        BadMessage::Undecodable(DecodeError::NewerVersion {
            version: 3,
            current: 2,
            ..
        })
    ));
    assert!(matches!(
        &reasons[5],
        BadMessage::Undecodable(DecodeError::InvalidPayload { .. })
    ));

    let letters = bus.list("ledger").await.unwrap();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    assert_eq!(errors.len(), 6);
    assert!(
        errors[0].starts_with("not an event message: message payload is not JSON"),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1],
        "not an event message: message lacks the `Es-Stream-Id` header"
    );
    assert!(
        errors[2].contains("`Es-Stream-Version` is invalid: `seven` is not a decimal number"),
        "{}",
        errors[2]
    );
    assert_eq!(
        errors[3],
        "cannot decode the event: unknown event type `Refunded`"
    );
    assert!(
        errors[4].contains("schema version 3, newer than version 2"),
        "{}",
        errors[4]
    );
    assert!(
        errors[5]
            .starts_with("cannot decode the event: invalid payload for event `Placed` version 2"),
        "{}",
        errors[5]
    );
    assert!(
        errors.iter().all(|e| !e.contains("a lot")),
        "no payloads in errors"
    );
    assert!(letters.iter().all(|l| l.attempts == 1));
    assert_eq!(
        ledger.calls.load(Ordering::SeqCst),
        1,
        "no bad message reached the handler"
    );
    assert_eq!(consumer.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn unknown_types_can_be_ignored_and_older_versions_are_upcast() {
    let ledger = Ledger::default();
    let bus = MemoryBus::new();
    let subscription = bus.subscribe("ledger", "es.>").unwrap();
    let producer = MemoryStore::new();
    let mut v1 = raw("Placed", r#"{"cents":700}"#);
    v1.schema_version = 1;
    append(&producer, StreamKey::new("order", "old"), vec![v1]).await;
    append(
        &producer,
        StreamKey::new("order", "old"),
        vec![raw("Refunded", "{}")],
    )
    .await;
    Relay::new(producer, bus.clone(), "orders")
        .publish_pending()
        .await
        .unwrap();
    let mut consumer = Consumer::new(
        MemoryStore::new(),
        ledger.clone(),
        subscription,
        bus.clone(),
    )
    .ignore_unknown_types(true);
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!(ledger.handled()[0].1, 700, "version 1 upcast to version 2");
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Ignored)), "{outcome:?}");
    assert!(bus.list("ledger").await.unwrap().is_empty());
}

#[tokio::test]
async fn the_consumer_runs_until_shut_down() {
    let ledger = Ledger::default();
    let (bus, log, consumer) = consumer_of(5, &ledger).await;
    let mut consumer = consumer.poll_timeout(Duration::from_millis(10));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        consumer
            .run(async {
                let _ = stopped.await;
            })
            .await
            .map(|()| consumer)
    });
    for _ in 0..2000 {
        if ledger.handled().len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    let mut consumer = running.await.unwrap().unwrap();
    assert_eq!(ledger.handled().len(), log.len());
    assert_eq!(consumer.pending().await.unwrap(), 0);
    assert!(bus.list("ledger").await.unwrap().is_empty());
}

#[tokio::test]
async fn the_memory_inbox_commits_with_the_transaction() {
    let store = MemoryStore::new();
    let id = Uuid::new_v4();
    // Rolled back: not recorded.
    let mut dropped = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(store.record_processed(&mut dropped, "c", id).await.unwrap());
    assert!(
        !store.record_processed(&mut dropped, "c", id).await.unwrap(),
        "seen in the transaction"
    );
    drop(dropped);
    // Two transactions racing: the second commit fails as transient; retried, it finds the row.
    let mut first = store.begin(LogScope::AllTenants).await.unwrap();
    let mut second = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(store.record_processed(&mut first, "c", id).await.unwrap());
    assert!(store.record_processed(&mut second, "c", id).await.unwrap());
    store.commit(first).await.unwrap();
    let error = store.commit(second).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let mut retried = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(!store.record_processed(&mut retried, "c", id).await.unwrap());
    // Another consumer has its own inbox.
    assert!(store.record_processed(&mut retried, "d", id).await.unwrap());

    // Through a DynStore: delegated when made with the inbox, an error otherwise.
    let dyn_store = DynStore::new_with_inbox(store.clone());
    let mut transaction = dyn_store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        !dyn_store
            .record_processed(&mut transaction, "c", id)
            .await
            .unwrap()
    );
    assert!(
        dyn_store
            .record_processed(&mut transaction, "e", id)
            .await
            .unwrap()
    );
    dyn_store.commit(transaction).await.unwrap();
    let mut check = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(!store.record_processed(&mut check, "e", id).await.unwrap());
    let without = DynStore::new(store);
    let mut transaction = without.begin(LogScope::AllTenants).await.unwrap();
    let error = without
        .record_processed(&mut transaction, "c", id)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert!(error.to_string().contains("keeps no inbox"), "{error}");
}

/// A `MemoryStore` whose next commits fail as if the database were unavailable.
#[derive(Clone, Default)]
struct FlakyStore {
    inner: MemoryStore,
    failing_commits: Arc<AtomicUsize>,
}

impl FlakyStore {
    fn fail_next_commits(&self, count: usize) {
        self.failing_commits.store(count, Ordering::SeqCst);
    }
}

impl EventStore for FlakyStore {
    async fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<es_core::AppendOutcome, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: es_core::Until,
    ) -> es_core::EventStream<'a> {
        self.inner.read_stream(stream, from_version, until)
    }

    async fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(scope, after, limit).await
    }

    async fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.find_event(scope, event_id).await
    }
}

impl ProjectionStore for FlakyStore {
    type Transaction = MemoryTransaction;
    type Lock = es_core::MemoryLock;

    async fn begin(&self, scope: LogScope<'_>) -> Result<MemoryTransaction, StoreError> {
        self.inner.begin(scope).await
    }

    async fn commit(&self, transaction: MemoryTransaction) -> Result<(), StoreError> {
        let failing = self.failing_commits.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_commits.store(failing - 1, Ordering::SeqCst);
            return Err(StoreError::unavailable(
                "commit a transaction",
                "the test database is away",
            ));
        }
        self.inner.commit(transaction).await
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        self.inner.load_checkpoint(projection).await
    }

    async fn save_checkpoint(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        self.inner
            .save_checkpoint(transaction, projection, position)
            .await
    }

    async fn park(
        &self,
        transaction: &mut MemoryTransaction,
        dead_letter: &es_core::projection::DeadLetter,
    ) -> Result<(), StoreError> {
        self.inner.park(transaction, dead_letter).await
    }

    async fn unpark(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        self.inner.unpark(transaction, projection, position).await
    }

    async fn reset_projection(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        self.inner.reset_projection(transaction, projection).await
    }

    async fn dead_letters(
        &self,
        projection: &str,
    ) -> Result<Vec<es_core::projection::DeadLetter>, StoreError> {
        self.inner.dead_letters(projection).await
    }

    async fn try_lock(&self, projection: &str) -> Result<Option<es_core::MemoryLock>, StoreError> {
        self.inner.try_lock(projection).await
    }

    async fn fence(
        &self,
        transaction: &mut MemoryTransaction,
        lock: &es_core::MemoryLock,
    ) -> Result<(), StoreError> {
        self.inner.fence(transaction, lock).await
    }
}

impl InboxStore for FlakyStore {
    async fn record_processed(
        &self,
        transaction: &mut MemoryTransaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, StoreError> {
        self.inner
            .record_processed(transaction, consumer, event_id)
            .await
    }
}

/// The ledger on the flaky store: the same handler, another store type.
impl Projection<FlakyStore> for Ledger {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "ledger"
    }

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction,
        event: &OrderEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        <Ledger as Projection<MemoryStore>>::handle(self, transaction, event, envelope).await
    }

    async fn reset(&mut self, transaction: &mut MemoryTransaction) -> Result<(), HandlerError> {
        <Ledger as Projection<MemoryStore>>::reset(self, transaction).await
    }
}

#[tokio::test]
async fn a_relay_retries_a_checkpoint_commit_the_database_was_unavailable_for() {
    let (seed, log) = seeded(2, 2).await;
    let store = FlakyStore {
        inner: seed,
        ..Default::default()
    };
    store.fail_next_commits(2);
    let bus = MemoryBus::new();
    let mut relay = Relay::new(store.clone(), bus.clone(), "orders").retry(fast_retry(5));
    let summary = relay.publish_pending().await.unwrap();
    assert_eq!(summary.checkpoint, log.last().unwrap().position);
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        event_ids(&bus.published()),
        expected,
        "published again, deduplicated"
    );

    store.fail_next_commits(10);
    append(
        &store.inner,
        StreamKey::new("order", "late"),
        vec![placed(1)],
    )
    .await;
    let error = relay.publish_pending().await.unwrap_err();
    assert!(
        matches!(&error, RelayError::Store { source, .. } if source.is_transient()),
        "{error:?}"
    );
    assert_eq!(relay.lag().await.unwrap().behind, 1);
}

#[tokio::test]
async fn an_unavailable_store_is_retried_without_counting_towards_dead_letters() {
    let ledger = Ledger::default();
    let (producer, log) = seeded(1, 1).await;
    let bus = MemoryBus::new();
    let subscription = bus.subscribe("ledger", "es.>").unwrap();
    Relay::new(producer, bus.clone(), "orders")
        .publish_pending()
        .await
        .unwrap();
    let store = FlakyStore::default();
    store.fail_next_commits(3);
    let mut consumer =
        Consumer::new(store, ledger.clone(), subscription, bus.clone()).retry(fast_retry(2));
    assert_eq!(consumer.deliveries(), 2);
    let mut outcomes = Vec::new();
    while let Some(outcome) = consumer
        .process_next(Duration::from_millis(100))
        .await
        .unwrap()
    {
        outcomes.push(outcome);
    }
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    for (index, outcome) in outcomes[..3].iter().enumerate() {
        assert!(
            matches!(outcome, Outcome::Retrying { attempt, error } if *attempt == index as u32 + 1 && error.contains("unavailable")),
            "{outcomes:?}"
        );
    }
    assert!(matches!(outcomes[3], Outcome::Handled), "{outcomes:?}");
    assert_eq!(ledger.handled(), vec![(log[0].event_id, 0)]);
    assert!(bus.list("ledger").await.unwrap().is_empty());
}
