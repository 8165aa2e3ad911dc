//! The repository on `MemoryStore`: commands, metadata, retries, snapshots, time travel and
//! every class of bad stored data.

use std::sync::Arc;

use chrono::{Duration, Utc};
use es_core::contract::{Field, InputRule};
use es_core::{
    Aggregate, Apply, CommandContext, EventStore, ExecuteError, ExpectedVersion, Handle, LoadError,
    LogScope, MemoryStore, NewEvent, Position, RawJson, Repository, Snapshot, StartedFrom,
    StoreError, StreamKey,
};
use es_examples::order::{
    CancelOrder, CreateOrder, Order, OrderItem, OrderStatus, ReserveInventory,
};
use es_tests::{Hooked, Hooks};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Added {
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, es_core::Event)]
pub enum CounterEvent {
    Added(Added),
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, es_core::Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot_every = 7)]
pub struct Counter {
    total: i64,
    count: u64,
}

impl Apply<Added> for Counter {
    fn apply(&mut self, event: &Added) {
        self.total += event.amount;
        self.count += 1;
    }
}

#[derive(Debug)]
pub struct Add(i64);

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("amount must be positive")]
pub struct NotPositive;

impl Handle<Add> for Counter {
    type Error = NotPositive;
    /// The first addition starts the counter.
    const CREATES: bool = true;
    fn handle(&self, command: &Add) -> Result<Vec<CounterEvent>, NotPositive> {
        if command.0 <= 0 {
            return Err(NotPositive);
        }
        Ok(vec![CounterEvent::Added(Added { amount: command.0 })])
    }
}

fn create_order() -> CreateOrder {
    CreateOrder {
        customer_id: "alice".into(),
        items: vec![OrderItem::new("book", 2, 1_500)],
        shipping_address: es_examples::order::Address {
            street: "1 Main St".into(),
            city: "Springfield".into(),
            postal_code: "12345".into(),
            country: "US".into(),
        },
        at: Utc::now(),
    }
}

fn raw_event(event_type: &str, schema_version: u32, payload: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.into(),
        schema_version,
        payload: RawJson::from_string(payload),
        metadata: RawJson::empty_object(),
    }
}

fn order(id: &str) -> StreamKey<'_> {
    StreamKey::new(Order::NAME, id)
}

fn counter(id: &str) -> StreamKey<'_> {
    StreamKey::new(Counter::NAME, id)
}

#[tokio::test]
async fn execute_records_events_with_the_command_metadata() {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let ctx = CommandContext::new()
        .with_correlation_id("request-7f3a")
        .with_actor("user-7")
        .with_source("checkout")
        .with_trace_id("trace-1")
        .with_field("channel", "web");
    let done = orders.execute("o-1", &create_order(), &ctx).await.unwrap();
    assert_eq!(
        (done.first_version, done.version, done.conflicts),
        (1, 1, 0)
    );
    assert_eq!(done.state.status, OrderStatus::Pending);
    let recorded = store
        .read_all(LogScope::AllTenants, Position::START, 10)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    let event = &recorded[0];
    assert_eq!(event.stream(), order("o-1"), "the default tenant");
    assert_eq!(
        (event.event_type.as_str(), event.schema_version),
        ("OrderCreated", 2)
    );
    assert_eq!(event.event_id, done.event_ids[0]);
    assert_eq!(Some(event.position), done.last_position);
    let metadata = event.metadata().unwrap();
    assert_eq!(metadata.correlation_id.as_deref(), Some("request-7f3a"));
    assert_eq!(metadata.causation_id.as_deref(), Some(ctx.command_id()));
    assert_eq!(metadata.actor_id.as_deref(), Some("user-7"));
    assert_eq!(metadata.source.as_deref(), Some("checkout"));
    assert_eq!(metadata.trace_id.as_deref(), Some("trace-1"));
    assert_eq!(metadata.extra["channel"], "web");
    let payload = event.payload.to_value().unwrap();
    assert_eq!(payload["total_amount"], 3_000);
    assert!(
        payload.get("OrderCreated").is_none(),
        "the payload carries no enum tag"
    );

    // A command in reaction to the event joins its correlation and names it as the cause.
    let follow_up = CommandContext::caused_by(event);
    assert_eq!(follow_up.correlation_id(), "request-7f3a");
    assert_eq!(follow_up.command_id(), event.event_id.to_string());
    let metadata = follow_up.metadata();
    assert_eq!(
        metadata.causation_id,
        Some(event.event_id.to_string()),
        "{metadata:?}"
    );

    // Without a correlation id, the command's id is the correlation.
    let plain = CommandContext::new();
    assert_eq!(plain.correlation_id(), plain.command_id());
}

#[tokio::test]
async fn a_rejected_command_writes_nothing() {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let ctx = CommandContext::new();
    orders.execute("o-1", &create_order(), &ctx).await.unwrap();
    let error = orders
        .execute(
            "o-1",
            &es_examples::order::ConfirmOrder { at: Utc::now() },
            &ctx,
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.rejection(),
        Some(&es_examples::order::OrderError::InvalidStatus {
            action: "confirm order",
            status: OrderStatus::Pending,
        })
    );
    assert_eq!(store.stream_version(order("o-1")).await.unwrap(), Some(1));
}

/// Another writer always gets in first: before every append of the repository, it appends an
/// `Added { amount: 1 }` to the same stream.
#[derive(Debug, Clone)]
struct Rival;

impl<S: EventStore> Hooks<S> for Rival {
    async fn before_append(&self, inner: &S, stream: StreamKey<'_>) -> Result<(), StoreError> {
        let rival = raw_event("Added", 1, r#"{"amount":1}"#);
        inner
            .append(stream, ExpectedVersion::Any, vec![rival])
            .await
            .map(drop)
    }
}

#[tokio::test]
async fn retries_stop_at_the_limit_with_a_typed_error() {
    let store = Hooked::new(MemoryStore::new(), Rival);
    let counters = Repository::<Counter, _>::new(store.clone()).with_max_retries(3);
    let error = counters
        .execute("c", &Add(5), &CommandContext::new())
        .await
        .unwrap_err();
    match &error {
        ExecuteError::TooManyConflicts { stream, attempts } => {
            assert_eq!((stream.as_key(), *attempts), (counter("c"), 4));
        }
        other => panic!("expected TooManyConflicts, got {other:?}"),
    }
    assert!(
        error.is_transient(),
        "other writers may let it through later"
    );
    let loaded = Repository::<Counter, _>::new(store.inner.clone())
        .load("c")
        .await
        .unwrap();
    assert_eq!(
        (loaded.state.total, loaded.version),
        (4, 4),
        "only the rival's events were written"
    );
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_used_when_loading() {
    let store = MemoryStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    for _ in 0..6 {
        counters
            .execute("c", &Add(1), &CommandContext::new())
            .await
            .unwrap();
    }
    counters.flush_snapshots().await;
    assert_eq!(
        store.load_snapshot(counter("c")).await.unwrap(),
        None,
        "no snapshot before 7 events"
    );
    counters
        .execute("c", &Add(1), &CommandContext::new())
        .await
        .unwrap();
    counters.flush_snapshots().await;
    let snapshot = store.load_snapshot(counter("c")).await.unwrap().unwrap();
    assert_eq!((snapshot.stream_version, snapshot.state_version), (7, 1));
    assert_eq!(snapshot.stream(), counter("c"));
    assert_eq!(
        snapshot.state.decode::<Counter>().unwrap(),
        Counter { total: 7, count: 7 }
    );

    // Prove the snapshot is used: a doctored one shows through, plus the newer events.
    counters
        .execute("c", &Add(1), &CommandContext::new())
        .await
        .unwrap();
    let doctored = Snapshot {
        state: RawJson::encode(&Counter {
            total: 100,
            count: 7,
        })
        .unwrap(),
        ..snapshot.clone()
    };
    store.save_snapshot(&doctored).await.unwrap();
    let loaded = counters.load("c").await.unwrap();
    assert_eq!(
        (loaded.state.total, loaded.version, loaded.started_from),
        (101, 8, StartedFrom::Snapshot(7))
    );
    // Time travel before the snapshot replays from the start instead.
    let then = counters.load_at_version("c", 5).await.unwrap();
    assert_eq!(
        (then.state.total, then.started_from),
        (5, StartedFrom::Empty)
    );
}

/// Snapshot saves wait for a permit, to see whether commands wait for them.
#[derive(Debug, Clone)]
struct HoldSnapshots(Arc<tokio::sync::Semaphore>);

impl<S: EventStore> Hooks<S> for HoldSnapshots {
    async fn before_save_snapshot(&self, _: &Snapshot) {
        drop(self.0.acquire().await.expect("the semaphore stays open"));
    }
}

#[tokio::test]
async fn a_command_does_not_wait_for_its_snapshot_and_a_flush_does() {
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let store = Hooked::new(MemoryStore::new(), HoldSnapshots(permits.clone()));
    let counters = Repository::<Counter, _>::new(store.clone());
    for version in 1..=8 {
        let context = CommandContext::new();
        let command = counters.execute("c", &Add(1), &context);
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), command)
            .await
            .expect("the command returns while its snapshot waits")
            .unwrap();
        assert_eq!(done.version, version);
    }
    let flush = counters.flush_snapshots();
    tokio::pin!(flush);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), &mut flush)
            .await
            .is_err(),
        "the flush waits for the held save"
    );
    assert_eq!(store.inner.load_snapshot(counter("c")).await.unwrap(), None);
    permits.add_permits(1);
    flush.await;
    let snapshot = store.inner.load_snapshot(counter("c")).await.unwrap();
    assert_eq!(snapshot.map(|s| s.stream_version), Some(7));
}

#[tokio::test]
async fn outdated_or_undecodable_snapshots_are_ignored() {
    let store = MemoryStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    for _ in 0..9 {
        counters
            .execute("c", &Add(2), &CommandContext::new())
            .await
            .unwrap();
    }
    counters.flush_snapshots().await;
    let snapshot = store.load_snapshot(counter("c")).await.unwrap().unwrap();
    let loaded = counters.load("c").await.unwrap();
    assert_eq!(
        (loaded.state.total, loaded.started_from),
        (18, StartedFrom::Snapshot(7)),
        "the valid snapshot is used"
    );
    let bad = [
        Snapshot {
            state_version: 99,
            state: RawJson::encode(&Counter {
                total: -1,
                count: 0,
            })
            .unwrap(),
            ..snapshot.clone()
        },
        Snapshot {
            state: RawJson::from_string("{\"total\": \"not a number\"}"),
            ..snapshot.clone()
        },
        Snapshot {
            state: RawJson::from_string("[\"not a counter\"]"),
            ..snapshot.clone()
        },
    ];
    for snapshot in bad {
        store.save_snapshot(&snapshot).await.unwrap();
        let loaded = counters.load("c").await.unwrap();
        assert_eq!(
            (loaded.state.total, loaded.version, loaded.started_from),
            (18, 9, StartedFrom::Empty),
            "rebuilt from events"
        );
    }
}

#[tokio::test]
async fn time_travel_by_version_and_by_time() {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let ctx = CommandContext::new();
    orders.execute("o", &create_order(), &ctx).await.unwrap();
    orders
        .execute(
            "o",
            &ReserveInventory {
                reservation_id: "r".into(),
            },
            &ctx,
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cancel = CancelOrder {
        reason: "late".into(),
        at: Utc::now(),
    };
    orders.execute("o", &cancel, &ctx).await.unwrap();

    assert_eq!(
        orders.load("o").await.unwrap().state.status,
        OrderStatus::Cancelled
    );
    let v1 = orders.load_at_version("o", 1).await.unwrap();
    assert_eq!((v1.state.status, v1.version), (OrderStatus::Pending, 1));
    let at_time = orders.load_at_time("o", between).await.unwrap();
    assert_eq!(
        (at_time.state.status, at_time.version),
        (OrderStatus::InventoryReserved, 2)
    );
    // Before its first event the stream did not exist yet.
    let before = orders.load_at_time("o", between - Duration::days(1)).await;
    assert!(
        matches!(&before, Err(LoadError::NotFound { stream }) if stream.as_key() == order("o")),
        "{before:?}"
    );
}

async fn load_error(store: &MemoryStore, stream: &str) -> LoadError {
    Repository::<Order, _>::new(store.clone())
        .load(stream)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn bad_stored_events_give_typed_errors_naming_stream_and_version() {
    let store = MemoryStore::new();
    let created = serde_json::to_string(&es_examples::order::OrderCreated {
        customer_id: "a".into(),
        items: vec![],
        shipping_address: create_order().shipping_address,
        total_amount: 0,
        created_at: Utc::now(),
    })
    .unwrap();
    let cases = [
        (
            "unknown-type",
            raw_event("OrderShipped", 1, "{}"),
            "unknown event type `OrderShipped`",
        ),
        (
            "newer",
            raw_event("OrderCreated", 3, &created),
            "schema version 3, newer than version 2",
        ),
        (
            "corrupt",
            raw_event("OrderCreated", 2, "{\"customer_id\": 5}"),
            "invalid payload for event `OrderCreated` version 2",
        ),
        (
            "version-zero",
            raw_event("OrderCreated", 0, &created),
            "version 0 has no upcast path",
        ),
    ];
    for (stream, event, expected) in cases {
        store
            .append(
                order(stream),
                ExpectedVersion::NoStream,
                vec![raw_event("OrderCreated", 2, &created)],
            )
            .await
            .unwrap();
        store
            .append(order(stream), ExpectedVersion::Exact(1), vec![event])
            .await
            .unwrap();
        let error = load_error(&store, stream).await;
        assert!(
            matches!(
                &error,
                LoadError::Decode {
                    stream: key,
                    stream_version: 2,
                    ..
                } if key.as_key() == order(stream)
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("stream `order/{stream}`")),
            "{message}"
        );
        assert!(message.contains("version 2"), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

/// The same id under another aggregate type is another stream: an order does not see the
/// product `p-1`, and can be created beside it.
#[tokio::test]
async fn the_same_id_under_another_aggregate_type_is_another_stream() {
    let store = MemoryStore::new();
    let product = StreamKey::new("product", "p-1");
    store
        .append(
            product,
            ExpectedVersion::NoStream,
            vec![raw_event("ProductCreated", 1, "{}")],
        )
        .await
        .unwrap();
    let error = load_error(&store, "p-1").await;
    assert!(
        matches!(&error, LoadError::NotFound { stream } if stream.as_key() == order("p-1")),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "stream `order/p-1` does not exist");

    let orders = Repository::<Order, _>::new(store.clone());
    let created = orders
        .execute("p-1", &create_order(), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!(created.version, 1, "the order stream starts at version 1");
    assert_eq!(store.stream_version(product).await.unwrap(), Some(1));
    assert_eq!(store.stream_version(order("p-1")).await.unwrap(), Some(1));
}

/// The rule an id broke, from a load or a command refused by the input contract.
fn broken_rule(error: &StoreError) -> &InputRule {
    match error {
        StoreError::InvalidInput { rule, .. } => rule,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_ids_are_refused_by_the_input_contract() {
    let store = MemoryStore::new();
    let long = "x".repeat(es_core::contract::MAX_STREAM_ID_BYTES + 1);
    for (id, rule) in [
        (
            "",
            InputRule::Empty {
                field: Field::StreamId,
            },
        ),
        (
            "a\0b",
            InputRule::NulCharacter {
                field: Field::StreamId,
            },
        ),
        (
            long.as_str(),
            InputRule::TooLong {
                field: Field::StreamId,
                bytes: long.len(),
                max: es_core::contract::MAX_STREAM_ID_BYTES,
            },
        ),
    ] {
        match load_error(&store, id).await {
            LoadError::Store(error) => assert_eq!(broken_rule(&error), &rule),
            other => panic!("expected a store error, got {other:?}"),
        }
        let orders = Repository::<Order, _>::new(store.clone());
        match orders
            .execute(id, &create_order(), &CommandContext::new())
            .await
            .unwrap_err()
        {
            ExecuteError::Store(error) => assert_eq!(broken_rule(&error), &rule),
            other => panic!("expected a store error, got {other:?}"),
        }
    }
    let log = store
        .read_all(LogScope::AllTenants, Position::START, 10)
        .await
        .unwrap();
    assert!(log.is_empty(), "nothing was written");
}

#[test]
fn aggregate_constants_come_from_the_attribute() {
    assert_eq!(Order::NAME, "order");
    assert_eq!(Order::SNAPSHOT_EVERY, Some(10));
    assert_eq!(Counter::SNAPSHOT_EVERY, Some(7));
}

#[tokio::test]
async fn create_appends_without_reading_and_otherwise_answers_as_execute_does() {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let ctx = CommandContext::new();
    let created = orders
        .create("order-1", &create_order(), &ctx)
        .await
        .unwrap();
    assert_eq!((created.version, created.conflicts), (1, 0));
    assert_eq!(created.state.status, OrderStatus::Pending);

    // The stream exists: the append conflicts, and the command is decided on the real state.
    let again = orders
        .create("order-1", &create_order(), &ctx)
        .await
        .unwrap_err();
    assert_eq!(
        again.rejection(),
        Some(&es_examples::order::OrderError::AlreadyCreated)
    );

    // Rejected on the assumed empty state (no items): the answer is still the real state's.
    let empty = CreateOrder {
        items: vec![],
        ..create_order()
    };
    let rejected = orders.create("order-1", &empty, &ctx).await.unwrap_err();
    assert_eq!(
        rejected.rejection(),
        Some(&es_examples::order::OrderError::AlreadyCreated)
    );
    let fresh = orders.create("order-2", &empty, &ctx).await.unwrap_err();
    assert_eq!(
        fresh.rejection(),
        Some(&es_examples::order::OrderError::NoItems)
    );

    // A command that is valid on any state appends after the existing events.
    let counters = Repository::<Counter, _>::new(store.clone());
    counters.execute("c", &Add(1), &ctx).await.unwrap();
    let added = counters.create("c", &Add(2), &ctx).await.unwrap();
    assert_eq!((added.version, added.state.total), (2, 3));
    assert_eq!(
        store.stream_version(order("order-1")).await.unwrap(),
        Some(1),
        "nothing was written twice"
    );
    assert_eq!(store.stream_version(order("order-2")).await.unwrap(), None);
}
