//! The repository on `MemoryStore`: commands, metadata, retries, snapshots, time travel and
//! every class of bad stored data.

use chrono::{Duration, Utc};
use es_core::{
    Aggregate, Apply, CommandContext, EventStore, ExecuteError, ExpectedVersion, Handle, LoadError,
    MemoryStore, NewEvent, RawJson, Repository, Snapshot, StoreError, Until,
};
use es_examples::order::{
    CancelOrder, CreateOrder, Order, OrderItem, OrderStatus, ReserveInventory,
};
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

#[tokio::test]
async fn execute_records_events_with_the_command_metadata() {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let ctx = CommandContext::new()
        .with_actor("user-7")
        .with_source("checkout")
        .with_trace_id("trace-1")
        .with_field("tenant", "acme");
    let done = orders.execute("o-1", &create_order(), &ctx).await.unwrap();
    assert_eq!(
        (done.first_version, done.version, done.conflicts),
        (1, 1, 0)
    );
    assert_eq!(done.state.status, OrderStatus::Pending);
    let recorded = store.read_all(es_core::Position::START, 10).await.unwrap();
    assert_eq!(recorded.len(), 1);
    let event = &recorded[0];
    assert_eq!(
        (event.stream_type.as_str(), event.stream_id.as_str()),
        ("order", "o-1")
    );
    assert_eq!(
        (event.event_type.as_str(), event.schema_version),
        ("OrderCreated", 2)
    );
    assert_eq!(event.event_id, done.event_ids[0]);
    let metadata = event.metadata().unwrap();
    assert_eq!(metadata.correlation_id, Some(ctx.correlation_id));
    assert_eq!(metadata.causation_id, Some(ctx.command_id));
    assert_eq!(metadata.actor_id.as_deref(), Some("user-7"));
    assert_eq!(metadata.source.as_deref(), Some("checkout"));
    assert_eq!(metadata.trace_id.as_deref(), Some("trace-1"));
    assert_eq!(metadata.extra["tenant"], "acme");
    let payload = event.payload.to_value().unwrap();
    assert_eq!(payload["total_amount"], 3_000);
    assert!(
        payload.get("OrderCreated").is_none(),
        "the payload carries no enum tag"
    );

    let follow_up = CommandContext::caused_by(event);
    assert_eq!(follow_up.correlation_id, ctx.correlation_id);
    assert_ne!(follow_up.command_id, ctx.command_id);
}

#[tokio::test]
async fn a_rejected_command_writes_nothing() {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let error = orders
        .execute(
            "o-1",
            &ReserveInventory {
                reservation_id: "r".into(),
            },
            &CommandContext::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        ExecuteError::Rejected(es_examples::order::OrderError::NotFound)
    ));
    assert_eq!(store.stream_version("o-1").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_times_one_hundred_commands_on_one_aggregate_lose_nothing() {
    let store = MemoryStore::new();
    let counters = Repository::<Counter, _>::new(store.clone()).with_max_retries(10_000);
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 0..100i64 {
                let done = counters
                    .execute("hot", &Add(task * 1_000 + i + 1), &CommandContext::new())
                    .await
                    .unwrap();
                conflicts += done.conflicts;
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let expected: i64 = (0..8i64)
        .flat_map(|t| (0..100i64).map(move |i| t * 1_000 + i + 1))
        .sum();
    let loaded = counters.load("hot").await.unwrap();
    assert_eq!(
        (loaded.state.total, loaded.state.count, loaded.version),
        (expected, 800, 800)
    );
    let events: Vec<_> =
        futures_util::TryStreamExt::try_collect::<Vec<_>>(store.read_stream("hot", 1, Until::End))
            .await
            .unwrap();
    let mut amounts: Vec<i64> = events
        .iter()
        .map(|e| e.payload.decode::<Added>().unwrap().amount)
        .collect();
    amounts.sort_unstable();
    let mut sent: Vec<i64> = (0..8i64)
        .flat_map(|t| (0..100i64).map(move |i| t * 1_000 + i + 1))
        .collect();
    sent.sort_unstable();
    assert_eq!(
        amounts, sent,
        "every command's event is stored exactly once"
    );
    println!("conflicts retried: {conflicts}");
}

/// A store on which another writer always gets in first: every append of the repository meets
/// a concurrent write.
#[derive(Clone)]
struct ContendedStore(MemoryStore);

impl EventStore for ContendedStore {
    async fn append(
        &self,
        stream_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<es_core::AppendOutcome, StoreError> {
        let rival = raw_event("Added", 1, r#"{"amount":1}"#);
        self.0
            .append(stream_type, stream_id, ExpectedVersion::Any, vec![rival])
            .await?;
        self.0
            .append(stream_type, stream_id, expected, events)
            .await
    }
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from: u64,
        until: Until,
    ) -> es_core::EventStream<'a> {
        self.0.read_stream(stream_id, from, until)
    }
    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, StoreError> {
        self.0.stream_version(stream_id).await
    }
    async fn read_all(
        &self,
        after: es_core::Position,
        limit: usize,
    ) -> Result<Vec<es_core::RecordedEvent>, StoreError> {
        self.0.read_all(after, limit).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.0.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        self.0.load_snapshot(stream_id).await
    }
}

#[tokio::test]
async fn retries_stop_at_the_limit_with_a_typed_error() {
    let counters =
        Repository::<Counter, _>::new(ContendedStore(MemoryStore::new())).with_max_retries(3);
    let error = counters
        .execute("c", &Add(5), &CommandContext::new())
        .await
        .unwrap_err();
    match error {
        ExecuteError::TooManyConflicts {
            stream_id,
            attempts,
        } => assert_eq!((stream_id.as_str(), attempts), ("c", 4)),
        other => panic!("expected TooManyConflicts, got {other:?}"),
    }
    let loaded = counters.load("c").await.unwrap();
    assert_eq!(
        loaded.state.total, 4,
        "only the rival's events were written"
    );
}

/// The stream's snapshot, once one at `version` or later is saved: a command saves its snapshot
/// in a task of its own and does not wait for it.
async fn saved_snapshot(store: &MemoryStore, id: &str, version: u64) -> Snapshot {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(snapshot) = store.load_snapshot(id).await.unwrap()
            && snapshot.stream_version >= version
        {
            return snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot of `{id}` at version {version} or later within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
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
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        None,
        "no snapshot before 7 events"
    );
    counters
        .execute("c", &Add(1), &CommandContext::new())
        .await
        .unwrap();
    let snapshot = saved_snapshot(&store, "c", 7).await;
    assert_eq!((snapshot.stream_version, snapshot.state_version), (7, 1));
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
    assert_eq!(counters.load("c").await.unwrap().state.total, 101);
    // Time travel before the snapshot replays from the start instead.
    assert_eq!(
        counters.load_at_version("c", 5).await.unwrap().state.total,
        5
    );
}

/// A store whose snapshot saves wait for a permit, to see whether commands wait for them.
#[derive(Clone)]
struct HeldSnapshots {
    inner: MemoryStore,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl EventStore for HeldSnapshots {
    async fn append(
        &self,
        stream_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<es_core::AppendOutcome, StoreError> {
        self.inner
            .append(stream_type, stream_id, expected, events)
            .await
    }
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from: u64,
        until: Until,
    ) -> es_core::EventStream<'a> {
        self.inner.read_stream(stream_id, from, until)
    }
    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream_id).await
    }
    async fn read_all(
        &self,
        after: es_core::Position,
        limit: usize,
    ) -> Result<Vec<es_core::RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore stays open");
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream_id).await
    }
}

#[tokio::test]
async fn a_command_does_not_wait_for_its_snapshot() {
    let store = HeldSnapshots {
        inner: MemoryStore::new(),
        permits: std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
    };
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
    assert_eq!(store.inner.load_snapshot("c").await.unwrap(), None);
    store.permits.add_permits(1);
    let snapshot = saved_snapshot(&store.inner, "c", 7).await;
    assert_eq!(snapshot.stream_version, 7);
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
    let snapshot = saved_snapshot(&store, "c", 7).await;
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
            state: RawJson::from_string("not json at all"),
            ..snapshot.clone()
        },
        Snapshot {
            stream_type: "product".into(),
            state: RawJson::encode(&Counter {
                total: -1,
                count: 0,
            })
            .unwrap(),
            ..snapshot.clone()
        },
    ];
    for snapshot in bad {
        store.save_snapshot(&snapshot).await.unwrap();
        let loaded = counters.load("c").await.unwrap();
        assert_eq!(
            (loaded.state.total, loaded.version),
            (18, 9),
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
    let before = orders
        .load_at_time("o", between - Duration::days(1))
        .await
        .unwrap();
    assert_eq!((before.state.status, before.version), (OrderStatus::New, 0));
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
                "order",
                stream,
                ExpectedVersion::NoStream,
                vec![raw_event("OrderCreated", 2, &created)],
            )
            .await
            .unwrap();
        store
            .append("order", stream, ExpectedVersion::Exact(1), vec![event])
            .await
            .unwrap();
        let error = load_error(&store, stream).await;
        assert!(
            matches!(
                error,
                LoadError::Decode {
                    stream_version: 2,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("stream `{stream}`")), "{message}");
        assert!(message.contains("version 2"), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn a_stream_of_another_aggregate_type_is_refused() {
    let store = MemoryStore::new();
    store
        .append(
            "product",
            "p-1",
            ExpectedVersion::NoStream,
            vec![raw_event("ProductCreated", 1, "{}")],
        )
        .await
        .unwrap();
    let error = load_error(&store, "p-1").await;
    assert!(
        matches!(&error, LoadError::WrongStreamType { actual, expected: "order", .. } if actual == "product")
    );
    assert_eq!(
        error.to_string(),
        "stream `p-1` holds `product` events at version 1, not `order` events"
    );
}

#[tokio::test]
async fn invalid_ids_are_refused() {
    let store = MemoryStore::new();
    assert!(matches!(
        load_error(&store, "").await,
        LoadError::InvalidId { .. }
    ));
    assert!(matches!(
        load_error(&store, "a\0b").await,
        LoadError::InvalidId { .. }
    ));
    let orders = Repository::<Order, _>::new(store);
    let error = orders
        .execute("", &create_order(), &CommandContext::new())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        ExecuteError::Load(LoadError::InvalidId { .. })
    ));
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
        store.stream_version("order-1").await.unwrap(),
        Some(1),
        "nothing was written twice"
    );
}
