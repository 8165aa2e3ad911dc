//! Projections on the real PostgreSQL server (P14, P15), each test in a schema of its own:
//! aborting a runner mid-batch, live tailing under concurrent writers, parking and retrying a
//! poison event, the stop policy, a rebuild while writers append, two runners started at once,
//! the exactly-once effect of a read model committed with its checkpoint, a runner that lost its
//! lock, skipped and undecodable events, and the cost of looking for new events.
//!
//! The read model is seed 000's order list plus a counter per order incremented by every event
//! applied, so an event applied twice (or never) shows up as a wrong count.
//!
//! The server is the one `DATABASE_URL` names (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); when it does not answer, every test fails with
//! a message saying how to start it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use es_core::projection::{
    HandlerError, OnFailure, Progress, Projection, ProjectionError, ProjectionRunner,
    ProjectionStore, RetryPolicy,
};
use es_core::{
    Aggregate, CommandContext, EventStore, ExpectedVersion, Metadata, NewEvent, Position,
    RecordedEvent, Repository, StoreError,
};
use es_examples::order::{
    Address, CancelOrder, ConfirmOrder, CreateOrder, InventoryReserved, Order, OrderCancelled,
    OrderConfirmed, OrderCreated, OrderEvent, OrderItem, PaymentProcessed, ProcessPayment,
    ReserveInventory, total_of,
};
use es_examples::order_list::{OrderList, OrderRow};
use es_postgres::sqlx::{self, Postgres};
use es_postgres::{PgStore, testing};
use tokio::sync::{Notify, watch};

type Tx = sqlx::Transaction<'static, Postgres>;

/// How long a test waits for something that normally takes well under a second.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the tests observe of, and inject into, a [`Tracked`] projection's handler.
struct Probe {
    /// The position of every event handed to the handler, in call order (retries included).
    calls: Mutex<Vec<Position>>,
    /// While set, events of this (stream, event type) fail, after their writes.
    poison: Mutex<Option<(String, &'static str)>>,
    /// The call (1-based) at which the handler, after its writes, signals `paused` and waits
    /// for `resume` (0: never).
    pause_at: AtomicU64,
    paused: Notify,
    resume: watch::Sender<bool>,
    /// Slows every event down a little, so a catch-up takes a while.
    slow: AtomicBool,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            poison: Mutex::new(None),
            pause_at: AtomicU64::new(0),
            paused: Notify::new(),
            resume: watch::Sender::new(false),
            slow: AtomicBool::new(false),
        })
    }

    fn calls(&self) -> Vec<Position> {
        self.calls.lock().unwrap().clone()
    }

    fn call_count(&self) -> u64 {
        self.calls.lock().unwrap().len() as u64
    }

    fn poison(&self, stream_id: &str, event_type: &'static str) {
        *self.poison.lock().unwrap() = Some((stream_id.to_owned(), event_type));
    }

    fn cure(&self) {
        *self.poison.lock().unwrap() = None;
    }
}

/// Seed 000's order list, plus `order_event_counts` (events applied per order and the last
/// version applied), both written through the runner's transaction.
#[derive(Clone)]
struct Tracked {
    name: String,
    list: OrderList,
    counts: String,
    probe: Arc<Probe>,
}

impl Tracked {
    /// Creates the read model's tables in PostgreSQL schema `schema` (created if missing).
    async fn create(store: &PgStore, schema: &str, name: &str) -> Self {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(store.pool())
            .await
            .unwrap();
        let list = OrderList::in_schema(schema);
        list.create_table_postgres(store.pool()).await.unwrap();
        let counts = format!("\"{schema}\".order_event_counts");
        sqlx::query(&format!(
            "CREATE TABLE {counts} (
                order_id text PRIMARY KEY,
                events_applied bigint NOT NULL,
                last_version bigint NOT NULL
            )"
        ))
        .execute(store.pool())
        .await
        .unwrap();
        Self {
            name: name.to_owned(),
            list,
            counts,
            probe: Probe::new(),
        }
    }

    /// The same read model under another projection name and probe (a second runner).
    fn twin(&self, probe: Arc<Probe>) -> Self {
        Self {
            probe,
            ..self.clone()
        }
    }

    async fn rows(&self, store: &PgStore) -> Vec<OrderRow> {
        self.list.rows_postgres(store.pool()).await.unwrap()
    }

    /// `(order, events applied, last version applied)`, by order.
    async fn counts(&self, store: &PgStore) -> Vec<(String, i64, i64)> {
        sqlx::query_as(&format!(
            "SELECT order_id, events_applied, last_version FROM {} ORDER BY order_id",
            self.counts
        ))
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    fn runner(&self, store: &PgStore) -> ProjectionRunner<PgStore, Tracked> {
        ProjectionRunner::new(store.clone(), self.clone())
    }
}

impl Projection<PgStore> for Tracked {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &mut self,
        transaction: &mut Tx,
        event: &OrderEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let call = {
            let mut calls = self.probe.calls.lock().unwrap();
            calls.push(envelope.position);
            calls.len() as u64
        };
        if self.probe.slow.load(Ordering::Relaxed) && call % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
        Projection::<PgStore>::handle(&mut self.list, transaction, event, envelope).await?;
        sqlx::query(&format!(
            "INSERT INTO {} AS c (order_id, events_applied, last_version) VALUES ($1, 1, $2)
             ON CONFLICT (order_id) DO UPDATE
             SET events_applied = c.events_applied + 1, last_version = excluded.last_version",
            self.counts
        ))
        .bind(&envelope.stream_id)
        .bind(i64::try_from(envelope.stream_version)?)
        .execute(&mut **transaction)
        .await?;
        if call == self.probe.pause_at.load(Ordering::SeqCst) {
            // Mid-batch, with this batch's writes uncommitted in `transaction`.
            self.probe.paused.notify_one();
            let mut resume = self.probe.resume.subscribe();
            resume.wait_for(|resume| *resume).await?;
        }
        let poisoned =
            self.probe
                .poison
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|(stream_id, event_type)| {
                    *stream_id == envelope.stream_id && *event_type == envelope.event_type
                });
        if poisoned {
            return Err(format!(
                "poisoned: refusing {} of {}",
                envelope.event_type, envelope.stream_id
            )
            .into());
        }
        Ok(())
    }

    async fn reset(&mut self, transaction: &mut Tx) -> Result<(), HandlerError> {
        Projection::<PgStore>::reset(&mut self.list, transaction).await?;
        sqlx::query(&format!("DELETE FROM {}", self.counts))
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The event log
// ---------------------------------------------------------------------------------------------

fn created_at(n: usize) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap()
}

fn items(n: usize) -> Vec<OrderItem> {
    vec![
        OrderItem::new("book", 1 + (n % 3) as u32, 1_500),
        OrderItem::new("pen", 2, 200 + (n % 7) as i64),
    ]
}

fn address() -> Address {
    Address {
        street: "1-2-3 Shibuya".into(),
        city: "Tokyo".into(),
        postal_code: "150-0002".into(),
        country: "JP".into(),
    }
}

/// Order `n`'s whole life, as its aggregate would record it: created, inventory reserved,
/// paid, then confirmed (or, for every fifth order, cancelled).
fn lifecycle(n: usize) -> Vec<OrderEvent> {
    let items = items(n);
    let total = total_of(&items);
    let at = created_at(n);
    let last = if n % 5 == 4 {
        OrderEvent::OrderCancelled(OrderCancelled {
            reason: format!("customer {n} changed their mind"),
            cancelled_at: at + chrono::Duration::minutes(5),
        })
    } else {
        OrderEvent::OrderConfirmed(OrderConfirmed {
            confirmed_at: at + chrono::Duration::minutes(5),
        })
    };
    vec![
        OrderEvent::OrderCreated(OrderCreated {
            customer_id: format!("customer-{}", n % 17),
            items: items.clone(),
            shipping_address: address(),
            total_amount: total,
            created_at: at,
        }),
        OrderEvent::InventoryReserved(InventoryReserved {
            reservation_id: format!("res-{n}"),
            items,
        }),
        OrderEvent::PaymentProcessed(PaymentProcessed {
            payment_id: format!("pay-{n}"),
            amount: total,
            processed_at: at + chrono::Duration::minutes(1),
        }),
        last,
    ]
}

/// Appends the lives of orders `range` straight to the store, one append per order.
async fn seed(store: &PgStore, range: std::ops::Range<usize>) {
    for n in range {
        let events = lifecycle(n)
            .iter()
            .map(|event| NewEvent::encode(event, &Metadata::default()).unwrap())
            .collect();
        store
            .append(
                Order::NAME,
                &format!("order-{n}"),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap();
    }
}

/// Runs order `n`'s life through the repository, as an application would.
async fn live_order(orders: &Repository<Order, PgStore>, n: usize) {
    let id = format!("order-{n}");
    let context = CommandContext::new().with_source("projections_postgres");
    let items = items(n);
    let total = total_of(&items);
    let create = CreateOrder {
        customer_id: format!("customer-{}", n % 17),
        items,
        shipping_address: address(),
        at: created_at(n),
    };
    orders.execute(&id, &create, &context).await.unwrap();
    let reserve = ReserveInventory {
        reservation_id: format!("res-{n}"),
    };
    orders.execute(&id, &reserve, &context).await.unwrap();
    let pay = ProcessPayment {
        payment_id: format!("pay-{n}"),
        amount: total,
        at: Utc::now(),
    };
    orders.execute(&id, &pay, &context).await.unwrap();
    if n % 5 == 4 {
        let cancel = CancelOrder {
            reason: "changed their mind".into(),
            at: Utc::now(),
        };
        orders.execute(&id, &cancel, &context).await.unwrap();
    } else {
        let confirm = ConfirmOrder { at: Utc::now() };
        orders.execute(&id, &confirm, &context).await.unwrap();
    }
}

/// The whole global log, in order.
async fn log(store: &PgStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// What `order_event_counts` must hold for `log`: per order, its event count and last version.
fn expected_counts(log: &[RecordedEvent]) -> Vec<(String, i64, i64)> {
    let mut counts = BTreeMap::<String, (i64, i64)>::new();
    for event in log {
        let entry = counts.entry(event.stream_id.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(event.stream_version as i64);
    }
    counts
        .into_iter()
        .map(|(order, (applied, version))| (order, applied, version))
        .collect()
}

/// The read model a from-scratch catch-up of the whole log builds, in a schema of its own under
/// another projection name: `(rows, counts)`.
async fn built_from_scratch(store: &PgStore) -> (Vec<OrderRow>, Vec<(String, i64, i64)>) {
    let schema = testing::fresh_schema_name();
    let fresh = Tracked::create(store, &schema, "order_list_from_scratch").await;
    fresh
        .runner(store)
        .batch_size(1_000)
        .catch_up()
        .await
        .unwrap();
    let built = (fresh.rows(store).await, fresh.counts(store).await);
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(store.pool())
        .await
        .unwrap();
    built
}

/// Asserts that `tracked` holds exactly the effect of the whole log: each event applied once,
/// and the rows a from-scratch catch-up builds.
async fn assert_matches_the_log(store: &PgStore, tracked: &Tracked) {
    let log = log(store).await;
    let counts = tracked.counts(store).await;
    assert_eq!(
        counts,
        expected_counts(&log),
        "events applied per order differ from the log (twice or never)"
    );
    let (rows, scratch_counts) = built_from_scratch(store).await;
    assert_eq!(scratch_counts, counts);
    assert_eq!(
        tracked.rows(store).await,
        rows,
        "rows differ from a rebuild"
    );
    assert_eq!(
        store.load_checkpoint(&tracked.name).await.unwrap(),
        log.last().map(|event| event.position),
        "the checkpoint is at the end of the log"
    );
}

/// Waits for `condition`, failing with `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < PATIENCE, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn retries(max_attempts: u32, initial_backoff_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(initial_backoff_ms),
        max_backoff: Duration::from_millis(initial_backoff_ms * 4),
    }
}

/// One consistent look, in a single statement: `(events applied in the read model, events at or
/// before the projection's committed checkpoint)`.
async fn applied_and_checkpointed(store: &PgStore, tracked: &Tracked) -> (i64, i64) {
    let schema = store.schema();
    sqlx::query_as(&format!(
        "SELECT (SELECT coalesce(sum(events_applied), 0)::bigint FROM {counts}),
                (SELECT count(*) FROM \"{schema}\".events e
                 JOIN \"{schema}\".projection_checkpoints c ON c.projection = $1
                 WHERE (e.transaction_id, e.position) <= (c.transaction_id, c.position))",
        counts = tracked.counts
    ))
    .bind(&tracked.name)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// a. Abort mid-batch, restart
// ---------------------------------------------------------------------------------------------

/// Aborting the runner task mid-batch (twice while a handler holds uncommitted writes, three
/// times at arbitrary moments) and restarting it applies every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_aborted_mid_batch_and_restarted_applies_each_event_once() {
    let store = testing::store().await;
    seed(&store, 0..1_250).await; // 5,000 events
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    tracked.probe.slow.store(true, Ordering::Relaxed);
    let total = 5_000;

    let spawn = || {
        let mut runner = tracked.runner(&store).batch_size(100);
        tokio::spawn(async move { runner.catch_up().await })
    };
    let abort = async |task: tokio::task::JoinHandle<Result<Position, ProjectionError>>| {
        assert!(!task.is_finished(), "the catch-up ended before the abort");
        task.abort();
        let aborted = task.await.unwrap_err();
        assert!(aborted.is_cancelled(), "{aborted}");
        let (applied, checkpointed) = applied_and_checkpointed(&store, &tracked).await;
        assert_eq!(
            applied, checkpointed,
            "the committed read model holds exactly the events up to the committed checkpoint"
        );
        checkpointed
    };

    // Held inside a handler, halfway through a batch of 100 whose writes are not committed.
    let mut reached = Vec::new();
    for pause_after in [1_250, 1_383] {
        let pause_at = tracked.probe.call_count() + pause_after;
        tracked.probe.pause_at.store(pause_at, Ordering::SeqCst);
        let task = spawn();
        tokio::time::timeout(PATIENCE, tracked.probe.paused.notified())
            .await
            .expect("the runner reaches the pause");
        reached.push(abort(task).await);
        tracked.probe.pause_at.store(0, Ordering::SeqCst);
    }
    // Anywhere: in a handler, a query, a commit, or between batches (after some progress, so
    // that each run does some work whatever the machine's speed).
    for (progress, extra_ms) in [(230, 0), (170, 3), (310, 1)] {
        let target = tracked.probe.call_count() + progress;
        let task = spawn();
        eventually("the restarted runner makes progress", || async {
            tracked.probe.call_count() >= target
        })
        .await;
        tokio::time::sleep(Duration::from_millis(extra_ms)).await;
        reached.push(abort(task).await);
    }
    assert!(
        reached.windows(2).all(|w| w[0] <= w[1]) && reached[0] > 0 && reached[4] < total,
        "each restart went on from the last checkpoint: {reached:?}"
    );
    let checkpoint = spawn().await.unwrap().unwrap();

    let handled = tracked.probe.call_count();
    assert!(
        handled > total as u64,
        "aborted batches were handled again after the restart ({handled} calls)"
    );
    assert_eq!(checkpoint, log(&store).await.last().unwrap().position);
    assert_eq!(
        applied_and_checkpointed(&store, &tracked).await,
        (total, total)
    );
    assert_matches_the_log(&store, &tracked).await;
}

// ---------------------------------------------------------------------------------------------
// b. Live tailing under 4 writers
// ---------------------------------------------------------------------------------------------

/// 4 writers run orders through the repository while the projection tails the log live; once
/// they stop, the projection catches up and has handled the log exactly: every event once, in
/// the log's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_projection_matches_the_log_written_by_4_concurrent_writers() {
    let store = testing::store().await;
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // An idle timeout longer than the test's patience: only notifications wake it in time.
    let mut runner = tracked
        .runner(&store)
        .batch_size(25)
        .idle_timeout(Duration::from_secs(120));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });

    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let orders = Repository::<Order, _>::new(store.clone());
            tokio::spawn(async move {
                for i in 0..30 {
                    live_order(&orders, writer * 1_000 + i).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let handled_while_writing = tracked.probe.call_count();

    let log = log(&store).await;
    assert_eq!(log.len(), 4 * 30 * 4);
    let end = log.last().unwrap().position;
    eventually(
        "the tailing projection reaches the end of the log",
        || async { store.load_checkpoint(&tracked.name).await.unwrap() == Some(end) },
    )
    .await;
    stop.send(()).unwrap();
    let checkpoint = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the runner stops when asked")
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint, end);

    assert!(
        handled_while_writing > 0,
        "the projection handled events while the writers were still appending"
    );
    let positions: Vec<Position> = log.iter().map(|event| event.position).collect();
    assert_eq!(
        tracked.probe.calls(),
        positions,
        "every event handled once, in the order of the log"
    );
    assert_matches_the_log(&store, &tracked).await;
}

// ---------------------------------------------------------------------------------------------
// c. Park a poison event, retry it once fixed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_after_its_attempts_and_retried_once_fixed() {
    let store = testing::store().await;
    seed(&store, 0..3).await;
    let log = log(&store).await;
    let poison = log
        .iter()
        .find(|e| e.stream_id == "order-1" && e.event_type == "OrderConfirmed")
        .unwrap()
        .clone();
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    tracked.probe.poison("order-1", "OrderConfirmed");
    let mut runner = tracked
        .runner(&store)
        .retry(retries(3, 20))
        .on_failure(OnFailure::Park);

    let started = Instant::now();
    let checkpoint = runner.catch_up().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        checkpoint,
        log.last().unwrap().position,
        "went on past the parked event"
    );
    assert!(
        elapsed >= Duration::from_millis(20 + 40),
        "backed off between attempts: {elapsed:?}"
    );
    let poison_calls = tracked
        .probe
        .calls()
        .iter()
        .filter(|&&position| position == poison.position)
        .count();
    assert!(poison_calls >= 3, "tried at least 3 times: {poison_calls}");

    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let letter = &parked[0];
    assert_eq!(letter.projection, "order_list");
    assert_eq!(letter.position, poison.position);
    assert_eq!(letter.event_id, poison.event_id);
    assert_eq!(
        (
            letter.stream_id.as_str(),
            letter.stream_version,
            letter.event_type.as_str()
        ),
        ("order-1", 4, "OrderConfirmed")
    );
    assert_eq!(letter.attempts, 3);
    assert!(
        letter
            .error
            .contains("poisoned: refusing OrderConfirmed of order-1"),
        "{}",
        letter.error
    );
    assert!((Utc::now() - letter.parked_at).num_seconds().abs() < 60);

    // The failed attempts' writes were rolled back; the later order was processed.
    let counts = tracked.counts(&store).await;
    assert_eq!(
        counts,
        [
            ("order-0".to_owned(), 4, 4),
            ("order-1".to_owned(), 3, 3),
            ("order-2".to_owned(), 4, 4)
        ]
    );
    let status = |rows: &[OrderRow], order: &str| {
        rows.iter()
            .find(|row| row.order_id == order)
            .map(|row| row.status.clone())
            .unwrap()
    };
    let rows = tracked.rows(&store).await;
    assert_eq!(status(&rows, "order-1"), "PAYMENT_PROCESSED");
    assert_eq!(status(&rows, "order-2"), "CONFIRMED");

    // Still broken: stays parked, with one more attempt and the new error.
    assert!(!runner.retry_parked(letter.position).await.unwrap());
    let parked = runner.parked().await.unwrap();
    assert_eq!((parked.len(), parked[0].attempts), (1, 4), "{parked:?}");
    assert_eq!(
        tracked.counts(&store).await[1],
        ("order-1".to_owned(), 3, 3)
    );

    tracked.probe.cure();
    assert!(runner.retry_parked(letter.position).await.unwrap());
    assert!(runner.parked().await.unwrap().is_empty());
    assert!(matches!(
        runner.retry_parked(letter.position).await,
        Err(ProjectionError::NotParked { .. })
    ));
    assert_eq!(status(&tracked.rows(&store).await, "order-1"), "CONFIRMED");
    assert_matches_the_log(&store, &tracked).await;
}

// ---------------------------------------------------------------------------------------------
// The stop policy
// ---------------------------------------------------------------------------------------------

/// With [`OnFailure::Stop`] the runner stops with an error naming the event; the batch it was
/// in is rolled back and redone one event at a time, so the events before it count once and the
/// checkpoint stays just before it. Fixed, the runner resumes at that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_policy_stops_before_the_failing_event_with_an_error_naming_it() {
    let store = testing::store().await;
    seed(&store, 0..3).await;
    let log = log(&store).await;
    let index = log
        .iter()
        .position(|e| e.stream_id == "order-1" && e.event_type == "PaymentProcessed")
        .unwrap();
    let (before, poison) = (log[index - 1].position, log[index].clone());
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    tracked.probe.poison("order-1", "PaymentProcessed");
    let mut runner = tracked
        .runner(&store)
        .batch_size(100)
        .retry(retries(2, 5))
        .on_failure(OnFailure::Stop);

    let error = runner.catch_up().await.unwrap_err();
    match &error {
        ProjectionError::Handler {
            projection,
            position,
            stream_id,
            stream_version,
            event_type,
            attempts,
            source,
        } => {
            assert_eq!(projection, "order_list");
            assert_eq!(*position, poison.position);
            assert_eq!((stream_id.as_str(), *stream_version), ("order-1", 3));
            assert_eq!(event_type, "PaymentProcessed");
            assert_eq!(*attempts, 2);
            assert!(source.to_string().contains("poisoned"), "{source}");
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("`PaymentProcessed`")
            && message.contains("stream `order-1` version 3")
            && message.contains(&poison.position.to_string()),
        "{message}"
    );
    assert_eq!(
        store.load_checkpoint("order_list").await.unwrap(),
        Some(before)
    );
    assert!(runner.parked().await.unwrap().is_empty(), "nothing parked");
    assert_eq!(
        tracked.counts(&store).await,
        [("order-0".to_owned(), 4, 4), ("order-1".to_owned(), 2, 2)],
        "the rolled-back batch's events before the failing one count once"
    );
    assert_eq!(applied_and_checkpointed(&store, &tracked).await, (6, 6));

    // Stopped means stopped: another catch-up stops at the same event.
    assert!(matches!(
        runner.catch_up().await,
        Err(ProjectionError::Handler { position, .. }) if position == poison.position
    ));
    tracked.probe.cure();
    runner.catch_up().await.unwrap();
    assert_matches_the_log(&store, &tracked).await;
}

// ---------------------------------------------------------------------------------------------
// d. Rebuild while writers append
// ---------------------------------------------------------------------------------------------

/// A rebuild runs while 2 writers keep appending through the repository; its progress only
/// moves forward and ends at done == total; after the writers stop, a last catch-up makes the
/// read model match the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_writers_append_ends_consistent_with_the_log() {
    let store = testing::store().await;
    seed(&store, 0..500).await; // 2,000 events
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    tracked.runner(&store).catch_up().await.unwrap();
    // Damage the read model: the rebuild must start from nothing.
    sqlx::query(&format!(
        "UPDATE {} SET events_applied = 99",
        tracked.counts
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let writing = Arc::new(AtomicBool::new(true));
    let orders_written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let orders = Repository::<Order, _>::new(store.clone());
            let writing = writing.clone();
            let written = orders_written.clone();
            tokio::spawn(async move {
                let mut n = 10_000 * (writer + 1);
                while writing.load(Ordering::SeqCst) {
                    live_order(&orders, n).await;
                    written.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    eventually("the writers are appending", || async {
        orders_written.load(Ordering::SeqCst) >= 3
    })
    .await;

    let at_start = store.count_after(Position::START).await.unwrap();
    let mut reports: Vec<Progress> = Vec::new();
    let mut runner = tracked.runner(&store).batch_size(50);
    let checkpoint = tokio::time::timeout(PATIENCE, runner.rebuild(|p| reports.push(p)))
        .await
        .expect("the rebuild finishes while writers append")
        .unwrap();
    let at_end = store.count_after(Position::START).await.unwrap();
    writing.store(false, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(
        at_end > at_start,
        "writers appended during the rebuild ({at_start} -> {at_end} events)"
    );

    let last = reports.last().expect("progress was reported");
    assert!(last.done >= at_start, "{last:?} vs {at_start} events");
    assert_eq!(last.done, last.total, "{last:?}");
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].done <= w[1].done && w[0].total <= w[1].total),
        "progress only moves forward: {reports:?}"
    );
    assert!(reports.iter().all(|p| p.done <= p.total), "{reports:?}");
    assert!(
        reports.len() as u64 >= at_start / 50,
        "a report per batch: {} reports",
        reports.len()
    );
    let now = store.count_after(Position::START).await.unwrap();
    assert_eq!(
        store.count_after(checkpoint).await.unwrap(),
        now - last.done,
        "the rebuild counted every event up to its checkpoint, once"
    );

    // The writers have stopped: a last catch-up, then the read model is the log's.
    runner.catch_up().await.unwrap();
    assert_matches_the_log(&store, &tracked).await;
}

// ---------------------------------------------------------------------------------------------
// e. Two runners at once
// ---------------------------------------------------------------------------------------------

/// Two runners of the same projection, on two pools (as two processes would be), started at the
/// same moment: one takes the projection and processes everything; the other is refused with
/// `AlreadyRunning` while the first holds it, and handles nothing. Once the first is done, the
/// projection is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_started_at_once_only_one_processes() {
    let first_store = testing::store().await;
    let second_store = PgStore::new(testing::pool().await)
        .with_schema(first_store.schema())
        .unwrap()
        .with_horizon_wait(testing::TEST_HORIZON_WAIT);
    seed(&first_store, 0..50).await;
    let tracked = Tracked::create(&first_store, first_store.schema(), "order_list").await;
    let probes = [tracked.probe.clone(), Probe::new()];
    let projections = [tracked.clone(), tracked.twin(probes[1].clone())];
    for probe in &probes {
        // Whichever wins holds the projection, mid-batch, until told to go on.
        probe.pause_at.store(1, Ordering::SeqCst);
    }

    let start = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for (projection, store) in projections.iter().zip([&first_store, &second_store]) {
        let mut runner = projection.runner(store);
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            runner.catch_up().await
        }));
    }
    let winner = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            () = probes[0].paused.notified() => 0,
            () = probes[1].paused.notified() => 1,
        }
    })
    .await
    .expect("one runner starts processing");
    let loser = 1 - winner;
    let mut tasks: Vec<Option<_>> = tasks.into_iter().map(Some).collect();
    let refused = tokio::time::timeout(PATIENCE, tasks[loser].take().unwrap())
        .await
        .expect("the second runner answers while the first holds the projection")
        .unwrap();
    assert!(
        matches!(&refused, Err(ProjectionError::AlreadyRunning { projection }) if projection == "order_list"),
        "{refused:?}"
    );
    assert!(!tasks[winner].as_ref().unwrap().is_finished());
    probes[winner].resume.send_replace(true);
    let checkpoint = tokio::time::timeout(PATIENCE, tasks[winner].take().unwrap())
        .await
        .expect("the first runner finishes")
        .unwrap()
        .unwrap();

    let log = log(&first_store).await;
    assert_eq!(checkpoint, log.last().unwrap().position);
    assert_eq!(probes[winner].call_count(), 200);
    assert_eq!(
        probes[loser].call_count(),
        0,
        "the refused runner handled nothing"
    );
    assert_matches_the_log(&first_store, &tracked).await;

    // Released when the first runner returned: the other one may take over at once.
    probes[loser].pause_at.store(0, Ordering::SeqCst);
    let loser_store = [&first_store, &second_store][loser];
    let again = projections[loser].runner(loser_store).catch_up().await;
    assert_eq!(again.unwrap(), checkpoint);
    assert_eq!(probes[loser].call_count(), 0, "nothing new to handle");
}

// ---------------------------------------------------------------------------------------------
// f. Exactly once: the read model commits with the checkpoint
// ---------------------------------------------------------------------------------------------

/// A handler that fails after writing (its row and its count) has its writes rolled back with
/// the batch and its checkpoint: read model and checkpoint stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_after_a_write_rolls_back_the_write_with_the_checkpoint() {
    let store = testing::store().await;
    seed(&store, 0..1).await;
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    let mut runner = tracked
        .runner(&store)
        .batch_size(100)
        .retry(retries(1, 1))
        .on_failure(OnFailure::Stop);
    let before = runner.catch_up().await.unwrap();
    let rows_before = tracked.rows(&store).await;
    let counts_before = tracked.counts(&store).await;

    seed(&store, 1..3).await;
    // The first event of the next batch writes its row and its count, then fails.
    tracked.probe.poison("order-1", "OrderCreated");
    let calls_before = tracked.probe.call_count();
    let error = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(&error, ProjectionError::Handler { stream_id, stream_version: 1, .. } if stream_id == "order-1"),
        "{error:?}"
    );
    assert!(
        tracked.probe.call_count() > calls_before,
        "the handler ran (and wrote) before failing"
    );
    assert_eq!(
        store.load_checkpoint("order_list").await.unwrap(),
        Some(before)
    );
    assert_eq!(tracked.rows(&store).await, rows_before, "rows unchanged");
    assert_eq!(
        tracked.counts(&store).await,
        counts_before,
        "counts unchanged"
    );

    tracked.probe.cure();
    runner.catch_up().await.unwrap();
    assert_matches_the_log(&store, &tracked).await;
}

/// The checkpoint is written in the read model's transaction: when that transaction fails at
/// commit (a deferred constraint of the read model rejects a row only then), the checkpoint
/// does not move either, and the runner reports the failure instead of going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_and_the_read_model_commit_together() {
    let store = testing::store().await;
    seed(&store, 0..5).await;
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    let schema = store.schema();
    // Cancelled orders are refused, but only when the transaction commits.
    sqlx::query(&format!(
        "CREATE FUNCTION \"{schema}\".refuse_cancelled() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.status = 'CANCELLED' THEN
                 RAISE EXCEPTION 'cancelled orders are refused at commit';
             END IF;
             RETURN NEW;
         END $$"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE CONSTRAINT TRIGGER refuse_cancelled AFTER INSERT OR UPDATE ON {}
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \"{schema}\".refuse_cancelled()",
        tracked.list.table()
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let mut runner = tracked.runner(&store).batch_size(100);
    let error = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(
            &error,
            ProjectionError::Store {
                source: StoreError::Backend { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("refused at commit"), "{error}");
    // The whole log (order-4 is cancelled) is one batch, and every handler call succeeded.
    assert_eq!(
        tracked.probe.call_count(),
        20,
        "the handler accepted every event; only the commit failed"
    );
    assert_eq!(
        store.load_checkpoint("order_list").await.unwrap(),
        None,
        "the checkpoint rolled back with the read model"
    );
    assert!(tracked.rows(&store).await.is_empty());
    assert!(tracked.counts(&store).await.is_empty());
    assert!(runner.parked().await.unwrap().is_empty(), "nothing skipped");
}

/// The backend of the connection holding the advisory lock of `projection` on `store`'s schema
/// (the key es-postgres derives from the schema and projection name).
async fn lock_holder(store: &PgStore, projection: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((classid::bigint << 32) | objid::bigint)
               = ('x' || left(md5($1), 16))::bit(64)::bigint",
    )
    .bind(format!(
        "es-postgres projection {}.{projection}",
        store.schema()
    ))
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

/// Whether `result` is a store error whose cause is es-postgres's [`es_postgres::LockLost`].
fn lost_the_lock(result: &Result<Position, ProjectionError>) -> bool {
    match result {
        Err(ProjectionError::Store {
            source: StoreError::Backend { source, .. },
            ..
        }) => source.downcast_ref::<es_postgres::LockLost>().is_some(),
        _ => false,
    }
}

/// A runner whose lock went away under it (its connection was terminated: a network cut, an
/// idle-session timeout, an operator) while a successor was started must not commit over the
/// successor: its next commit fails with `LockLost` and rolls back, and every event is applied
/// once (the SQLite store fences its commits the same way; see docs/sqlite.md).
///
/// `same_store`: the successor runs on the first runner's store (one process) rather than on a
/// store of its own (another process).
async fn a_runner_that_lost_its_lock(same_store: bool) {
    let first_store = testing::store().await;
    let second_store = if same_store {
        first_store.clone()
    } else {
        PgStore::new(testing::pool().await)
            .with_schema(first_store.schema())
            .unwrap()
            .with_horizon_wait(testing::TEST_HORIZON_WAIT)
    };
    seed(&first_store, 0..100).await; // 400 events
    let tracked = Tracked::create(&first_store, first_store.schema(), "order_list").await;
    let successor = tracked.twin(Probe::new());

    // The first runner commits a batch, then holds the second one open.
    tracked.probe.pause_at.store(150, Ordering::SeqCst);
    let mut first = tracked.runner(&first_store).batch_size(100);
    let first = tokio::spawn(async move { first.catch_up().await });
    tokio::time::timeout(PATIENCE, tracked.probe.paused.notified())
        .await
        .expect("the first runner reaches its second batch");

    // Its lock disappears with its connection.
    let holder = lock_holder(&first_store, "order_list")
        .await
        .expect("the first runner holds the projection's advisory lock");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder)
        .fetch_one(first_store.pool())
        .await
        .unwrap();
    assert!(terminated);
    eventually("the lock is gone", || async {
        lock_holder(&first_store, "order_list").await.is_none()
    })
    .await;

    // A successor starts: it takes the projection over from the committed checkpoint, or is
    // refused while the first runner (of its own store) has not noticed its loss...
    let mut second = successor.runner(&second_store).batch_size(100);
    let second = tokio::spawn(async move { second.catch_up().await });
    eventually(
        "the successor starts handling events or is refused",
        || async { successor.probe.call_count() > 0 || second.is_finished() },
    )
    .await;
    // ...while the first one, unaware, goes on.
    tracked.probe.resume.send_replace(true);
    let first = tokio::time::timeout(PATIENCE, first)
        .await
        .expect("the first runner ends")
        .unwrap();
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the successor ends")
        .unwrap();
    assert!(
        lost_the_lock(&first),
        "the first runner's commit is refused: {first:?}"
    );
    assert!(
        second.is_ok() || matches!(second, Err(ProjectionError::AlreadyRunning { .. })),
        "{second:?}"
    );

    // A runner that holds the projection finishes the job...
    tracked.probe.pause_at.store(0, Ordering::SeqCst);
    tracked.runner(&first_store).catch_up().await.unwrap();
    // ...and every event was applied once.
    let expected: BTreeMap<_, _> = expected_counts(&log(&first_store).await)
        .into_iter()
        .map(|(order, applied, _)| (order, applied))
        .collect();
    let extra: i64 = tracked
        .counts(&first_store)
        .await
        .iter()
        .map(|(order, applied, _)| applied - expected.get(order).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        extra, 0,
        "{extra} event applications beyond one per event after a lost lock \
         (first runner: {first:?}; successor: {second:?})"
    );
    assert_matches_the_log(&first_store, &tracked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lock_to_another_process_does_not_apply_events_twice() {
    a_runner_that_lost_its_lock(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lock_within_one_process_does_not_apply_events_twice() {
    a_runner_that_lost_its_lock(true).await;
}

/// An event of a type the projection does not consume is skipped by name, undecoded; one it
/// consumes but cannot decode is parked at once (decoding again would fail again), with the
/// decode error; the events around both are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_types_are_skipped_and_undecodable_events_parked_without_retries() {
    let store = testing::store().await;
    seed(&store, 0..1).await;
    let raw = |event_type: &str, payload: &str| NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: es_core::RawJson::from_string(payload),
        metadata: es_core::RawJson::empty_object(),
    };
    store
        .append(
            "shipment",
            "shipment-1",
            ExpectedVersion::NoStream,
            vec![raw("ParcelShipped", "[1, 2]")],
        )
        .await
        .unwrap();
    store
        .append(
            Order::NAME,
            "order-broken",
            ExpectedVersion::NoStream,
            vec![raw("OrderCreated", r#"{"customer_id": 7}"#)],
        )
        .await
        .unwrap();
    seed(&store, 1..2).await;
    let tracked = Tracked::create(&store, store.schema(), "order_list").await;
    let mut runner = tracked
        .runner(&store)
        .retry(retries(5, 2_000))
        .on_failure(OnFailure::Park);

    // Retrying would back off for 2 + 4 + 8 + 8 s.
    let started = Instant::now();
    let checkpoint = runner.catch_up().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no backoff for an event that cannot decode: {:?}",
        started.elapsed()
    );
    let log = log(&store).await;
    assert_eq!(checkpoint, log.last().unwrap().position);
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        (
            parked[0].stream_id.as_str(),
            parked[0].event_type.as_str(),
            parked[0].attempts
        ),
        ("order-broken", "OrderCreated", 1)
    );
    assert!(
        parked[0].error.contains("decode") && parked[0].error.contains("OrderCreated"),
        "{}",
        parked[0].error
    );
    assert!(
        !tracked.probe.calls().iter().any(|p| log
            .iter()
            .any(|e| e.position == *p && e.stream_type == "shipment")),
        "the other aggregate's event never reached the handler"
    );
    assert_eq!(
        tracked.counts(&store).await,
        [("order-0".to_owned(), 4, 4), ("order-1".to_owned(), 4, 4)]
    );
}

/// `(sequential scans, rows read by them, index scans)` of the store's events table, once the
/// statistics of the store's statement connection (the only one its pool lends out) have been
/// flushed and show at least `scans_at_least` scans.
async fn event_table_scans(
    store: &PgStore,
    observer: &sqlx::PgPool,
    scans_at_least: i64,
) -> (i64, i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .unwrap();
    let mut latest = (0, 0, 0);
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        latest = sqlx::query_as(
            "SELECT seq_scan, seq_tup_read, coalesce(idx_scan, 0)
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'events'",
        )
        .bind(store.schema())
        .fetch_one(observer)
        .await
        .unwrap();
        if latest.0 + latest.2 >= scans_at_least {
            return latest;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the statistics of the events table never showed {scans_at_least} scans: {latest:?}");
}

/// A projection that has caught up looks for new events on every wake-up and every page: those
/// looks must cost an index probe, not a scan of the whole log (else each costs time in
/// proportion to the log's length: 35 ms per look at 100,000 events, seconds at millions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_for_new_events_at_the_end_of_the_log_does_not_scan_the_log() {
    // Fails with the helper's message (how to start a server) when none answers.
    let observer = testing::pool().await;
    // Two pooled connections: the notification listener's, started first, and one for every
    // statement, whose statistics can then be flushed on demand.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&testing::database_url())
        .await
        .unwrap();
    let store = testing::store_on(pool).await;
    store
        .wait_for_events(Position::START, Duration::from_millis(1))
        .await
        .unwrap();
    seed(&store, 0..1_250).await; // 5,000 events
    sqlx::query(&format!("ANALYZE \"{}\".events", store.schema()))
        .execute(&observer)
        .await
        .unwrap();
    let end = log(&store).await.last().unwrap().position;
    let (seq_before, read_before, idx_before) = event_table_scans(&store, &observer, 1).await;

    for _ in 0..5 {
        assert!(store.read_all(end, 100).await.unwrap().is_empty());
        store
            .wait_for_events(end, Duration::from_millis(1))
            .await
            .unwrap();
    }
    let scans_before = seq_before + idx_before;
    let (seq, read, idx) = event_table_scans(&store, &observer, scans_before + 10).await;
    assert!(
        read - read_before < 5_000,
        "10 looks past the end of a 5,000-event log read {} rows in {} sequential scans ({} index scans)",
        read - read_before,
        seq - seq_before,
        idx - idx_before
    );
}
