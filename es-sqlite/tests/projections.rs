//! Projections on SQLite with a SQL read model in the same file: catch-up, the checkpoint
//! committed with the read model (exactly-once effect, even when a runner dies mid-batch),
//! parking and retrying a poison event, the stop policy, rebuilds with progress, one runner per
//! projection (in process and across store instances, with lease takeover and fencing) and
//! live tailing.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TempStore, raw};
use es_core::projection::{
    HandlerError, OnFailure, Projection, ProjectionError, ProjectionRunner, ProjectionStore,
    RetryPolicy,
};
use es_core::{EventStore, ExpectedVersion, Position, RecordedEvent, StoreError};
use es_examples::bank::{AccountEvent, Deposited};
use es_sqlite::{LockLost, SqliteOptions, SqliteStore};
use sqlx::{Row, Sqlite};

/// Balance per account in the `balances` table, written through the runner's transaction; fails
/// on deposits of exactly `poison` while it is set, and waits `delay` per event.
#[derive(Clone, Default)]
struct Balances {
    handled: Arc<AtomicU64>,
    poison: Arc<Mutex<Option<i64>>>,
    delay: Option<Duration>,
}

impl Balances {
    fn handled(&self) -> u64 {
        self.handled.load(Ordering::SeqCst)
    }

    fn poison(&self, amount: Option<i64>) {
        *self.poison.lock().unwrap() = amount;
    }
}

impl Projection<SqliteStore> for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn handle(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, Sqlite>,
        event: &AccountEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let account = envelope.stream_id.as_str();
        match event {
            AccountEvent::Opened(_) => {
                sqlx::query("INSERT INTO balances (account, balance) VALUES (?1, 0)")
                    .bind(account)
                    .execute(&mut **transaction)
                    .await?;
            }
            AccountEvent::Deposited(Deposited { amount }) => {
                let poisoned = *self.poison.lock().unwrap() == Some(*amount);
                if poisoned {
                    return Err(format!("cannot handle a deposit of {amount}").into());
                }
                sqlx::query("UPDATE balances SET balance = balance + ?2 WHERE account = ?1")
                    .bind(account)
                    .bind(amount)
                    .execute(&mut **transaction)
                    .await?;
            }
            AccountEvent::Withdrawn(withdrawn) => {
                sqlx::query("UPDATE balances SET balance = balance - ?2 WHERE account = ?1")
                    .bind(account)
                    .bind(withdrawn.amount)
                    .execute(&mut **transaction)
                    .await?;
            }
            AccountEvent::Closed => {
                sqlx::query("DELETE FROM balances WHERE account = ?1")
                    .bind(account)
                    .execute(&mut **transaction)
                    .await?;
            }
        }
        Ok(())
    }

    async fn reset(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, Sqlite>,
    ) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM balances")
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }
}

/// A store with the read model's table in the same file.
async fn store_with_read_model(options: SqliteOptions) -> TempStore {
    let temp = TempStore::with_options(options).await;
    sqlx::query(
        "CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL) STRICT",
    )
    .execute(temp.store.pool())
    .await
    .unwrap();
    temp
}

async fn balances(store: &SqliteStore) -> BTreeMap<String, i64> {
    sqlx::query("SELECT account, balance FROM balances")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("account"), row.get("balance")))
        .collect()
}

async fn open(store: &SqliteStore, account: &str) {
    let event = raw("Opened", serde_json::json!({ "owner": "o" }));
    store
        .append("account", account, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
}

async fn deposit(store: &SqliteStore, account: &str, amount: i64) {
    let event = raw("Deposited", serde_json::json!({ "amount": amount }));
    store
        .append(
            "account",
            account,
            ExpectedVersion::StreamExists,
            vec![event],
        )
        .await
        .unwrap();
}

async fn last_position(store: &SqliteStore) -> Position {
    store
        .read_all(Position::START, usize::MAX)
        .await
        .unwrap()
        .last()
        .unwrap()
        .position
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn catch_up_builds_the_read_model_and_skips_other_event_types_undecoded() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    open(store, "a").await;
    deposit(store, "a", 10).await;
    // Not an account event, and not JSON the projection could decode: skipped by name.
    store
        .append(
            "order",
            "o-1",
            ExpectedVersion::Any,
            vec![raw("OrderShipped", serde_json::json!([1, 2]))],
        )
        .await
        .unwrap();
    open(store, "b").await;
    deposit(store, "b", 5).await;
    deposit(store, "a", 1).await;

    let projection = Balances::default();
    let mut runner = ProjectionRunner::new(store.clone(), projection.clone()).batch_size(2);
    let checkpoint = runner.catch_up().await.unwrap();
    assert_eq!(
        balances(store).await,
        BTreeMap::from([("a".into(), 11), ("b".into(), 5)])
    );
    assert_eq!(projection.handled(), 5);
    assert_eq!(checkpoint, last_position(store).await);
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(checkpoint)
    );

    // A new runner, on a new store instance, continues from the stored checkpoint.
    deposit(store, "b", 7).await;
    let reopened = temp.second_instance(SqliteOptions::new()).await;
    ProjectionRunner::new(reopened.clone(), projection.clone())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(projection.handled(), 6);
    assert_eq!(balances(store).await["b"], 12);
}

/// The read model is always exactly the events up to the checkpoint, even when the runner is
/// killed in the middle of batches: its uncommitted writes vanish with the checkpoint's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_model_commits_with_the_checkpoint_so_a_killed_runner_counts_nothing_twice() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    open(store, "a").await;
    for amount in 1..=120 {
        deposit(store, "a", amount).await;
    }
    let slow = Balances {
        delay: Some(Duration::from_millis(2)),
        ..Balances::default()
    };
    let mut checkpoint = Position::START;
    for round in 0..3 {
        // Kill the runner half way through a batch (batches of 16, killed 24 events in).
        let target = slow.handled() + 24;
        let mut runner = ProjectionRunner::new(store.clone(), slow.clone()).batch_size(16);
        let running = tokio::spawn(async move { runner.catch_up().await });
        eventually("the runner is half way", async || slow.handled() >= target).await;
        running.abort();
        let _ = running.await;
        // Between runs: the read model is the fold of exactly the checkpointed events.
        checkpoint = store
            .load_checkpoint("balances")
            .await
            .unwrap()
            .unwrap_or(Position::START);
        let deposits: i64 = store
            .read_all(Position::START, usize::MAX)
            .await
            .unwrap()
            .iter()
            .filter(|event| event.position <= checkpoint && event.event_type == "Deposited")
            .map(|event| {
                event.payload.to_value().unwrap()["amount"]
                    .as_i64()
                    .unwrap()
            })
            .sum();
        assert_eq!(
            balances(store).await.get("a").copied().unwrap_or(0),
            deposits,
            "round {round}"
        );
    }
    let committed = store.count_after(Position::START).await.unwrap()
        - store.count_after(checkpoint).await.unwrap();
    assert!(
        committed > 0 && checkpoint < last_position(store).await,
        "killed half way: {checkpoint}"
    );
    assert!(
        slow.handled() > committed,
        "some handled events were rolled back with their batch"
    );

    ProjectionRunner::new(store.clone(), Balances::default())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(balances(store).await["a"], (1..=120).sum::<i64>());
}

#[tokio::test]
async fn a_failed_batch_is_rolled_back_and_redone_event_by_event() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    open(store, "a").await;
    for amount in [1, 2, 666, 4, 5] {
        deposit(store, "a", amount).await;
    }
    let projection = Balances::default();
    projection.poison(Some(666));
    let mut runner = ProjectionRunner::new(store.clone(), projection.clone())
        .batch_size(100)
        .retry(fast_retries(2));
    runner.catch_up().await.unwrap();
    // The batch wrote 0 + 1 + 2 before failing; those writes were rolled back, not kept twice.
    assert_eq!(balances(store).await["a"], 12);
    let parked = runner.parked().await.unwrap();
    assert_eq!(
        parked.len(),
        1,
        "only the poison event: Opened was not inserted twice"
    );
    assert_eq!(parked[0].stream_version, 4);
}

#[tokio::test]
async fn a_poison_event_is_parked_after_its_attempts_and_retried_once_fixed() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    open(store, "a").await;
    deposit(store, "a", 1).await;
    deposit(store, "a", 666).await;
    deposit(store, "a", 2).await;
    let projection = Balances::default();
    projection.poison(Some(666));
    let mut runner = ProjectionRunner::new(store.clone(), projection.clone())
        .retry(fast_retries(3))
        .on_failure(OnFailure::Park);
    runner.catch_up().await.unwrap();
    assert_eq!(
        balances(store).await["a"],
        3,
        "events after the poison one were processed"
    );
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    assert_eq!(
        (
            letter.stream_id.as_str(),
            letter.stream_version,
            letter.attempts
        ),
        ("a", 3, 3)
    );
    assert_eq!(letter.event_type, "Deposited");
    assert_eq!(letter.projection, "balances");
    assert!(
        letter.error.contains("cannot handle a deposit of 666"),
        "{}",
        letter.error
    );
    let stored = store.read_event(letter.position).await.unwrap().unwrap();
    assert_eq!(stored.event_id, letter.event_id);

    assert!(!runner.retry_parked(letter.position).await.unwrap());
    assert_eq!(runner.parked().await.unwrap()[0].attempts, 4);

    projection.poison(None);
    assert!(runner.retry_parked(letter.position).await.unwrap());
    assert!(runner.parked().await.unwrap().is_empty());
    assert_eq!(balances(store).await["a"], 669);
    assert!(matches!(
        runner.retry_parked(letter.position).await,
        Err(ProjectionError::NotParked { .. })
    ));
}

#[tokio::test]
async fn the_stop_policy_stops_before_the_failing_event() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    open(store, "a").await;
    deposit(store, "a", 1).await;
    deposit(store, "a", 666).await;
    deposit(store, "a", 2).await;
    let projection = Balances::default();
    projection.poison(Some(666));
    let mut runner = ProjectionRunner::new(store.clone(), projection.clone())
        .batch_size(10)
        .retry(fast_retries(2))
        .on_failure(OnFailure::Stop);
    let error = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(
            &error,
            ProjectionError::Handler {
                stream_version: 3,
                attempts: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        balances(store).await["a"],
        1,
        "the event before the poison one was committed"
    );
    let log = store.read_all(Position::START, 10).await.unwrap();
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(log[1].position)
    );

    projection.poison(None);
    runner.catch_up().await.unwrap();
    assert_eq!(balances(store).await["a"], 669);
}

#[tokio::test]
async fn rebuild_clears_the_read_model_in_sql_and_replays_with_progress() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    for i in 0..50 {
        let account = format!("acc-{i}");
        open(store, &account).await;
        deposit(store, &account, i).await;
    }
    let projection = Balances::default();
    let mut runner = ProjectionRunner::new(store.clone(), projection.clone()).batch_size(7);
    runner.catch_up().await.unwrap();
    sqlx::query("INSERT INTO balances (account, balance) VALUES ('stale', -1)")
        .execute(store.pool())
        .await
        .unwrap();
    let mut reports = Vec::new();
    runner
        .rebuild(|progress| reports.push(progress))
        .await
        .unwrap();
    let rebuilt = balances(store).await;
    assert!(
        !rebuilt.contains_key("stale"),
        "reset cleared the read model"
    );
    assert_eq!(rebuilt.len(), 50);
    assert_eq!(rebuilt["acc-49"], 49);
    assert_eq!(projection.handled(), 200);
    let last = reports.last().unwrap();
    assert_eq!((last.done, last.total), (100, 100));
    assert!(reports.windows(2).all(|w| w[0].done <= w[1].done));
    assert!(reports.iter().all(|p| p.done <= p.total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_per_projection_in_process_and_across_instances() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    open(store, "a").await;
    let first = Balances::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner =
        ProjectionRunner::new(store.clone(), first.clone()).idle_timeout(Duration::from_millis(50));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });
    eventually("the first runner processes", async || first.handled() > 0).await;

    let second = Balances::default();
    let refused = ProjectionRunner::new(store.clone(), second.clone())
        .catch_up()
        .await;
    assert!(
        matches!(refused, Err(ProjectionError::AlreadyRunning { .. })),
        "{refused:?}"
    );
    // Another store instance on the file, as another process would have.
    let other = temp.second_instance(SqliteOptions::new()).await;
    let refused = ProjectionRunner::new(other.clone(), second.clone())
        .catch_up()
        .await;
    assert!(
        matches!(refused, Err(ProjectionError::AlreadyRunning { .. })),
        "{refused:?}"
    );
    assert_eq!(second.handled(), 0);

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    // Released on stop: in process at once, for the other instance once the row is deleted.
    ProjectionRunner::new(store.clone(), second.clone())
        .catch_up()
        .await
        .unwrap();
    eventually("the other instance gets the projection", async || {
        other.try_lock("balances").await.unwrap().is_some()
    })
    .await;
}

#[tokio::test]
async fn a_lock_whose_holder_died_is_taken_over_after_the_lease() {
    let lease = Duration::from_millis(300);
    let temp = store_with_read_model(SqliteOptions::new().lock_lease(lease)).await;
    let crashed = temp
        .second_instance(SqliteOptions::new().lock_lease(lease))
        .await;
    let lock = crashed
        .try_lock("balances")
        .await
        .unwrap()
        .expect("free at first");
    // The holder's process dies: no more heartbeats, and no release.
    crashed.close().await;
    drop(lock);

    assert!(
        temp.store.try_lock("balances").await.unwrap().is_none(),
        "the lease is still current"
    );
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let taken = temp.store.try_lock("balances").await.unwrap();
    assert!(taken.is_some(), "the expired lease is taken over");
}

#[tokio::test]
async fn a_runner_whose_lease_was_taken_over_cannot_commit() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    open(&temp.store, "a").await;
    let paused = temp.store.clone();
    let _paused_lock = paused
        .try_lock("balances")
        .await
        .unwrap()
        .expect("free at first");
    // The holder stops heartbeating (say, its process is suspended) long enough to expire.
    sqlx::query("UPDATE es_projection_locks SET heartbeat_at = 0")
        .execute(temp.store.pool())
        .await
        .unwrap();
    let other = temp.second_instance(SqliteOptions::new()).await;
    let _taken = other
        .try_lock("balances")
        .await
        .unwrap()
        .expect("expired, so taken over");

    let mut transaction = paused.begin().await.unwrap();
    sqlx::query("INSERT INTO balances (account, balance) VALUES ('a', 1000)")
        .execute(&mut *transaction)
        .await
        .unwrap();
    let error = paused
        .save_checkpoint(
            &mut transaction,
            "balances",
            last_position(&temp.store).await,
        )
        .await
        .expect_err("the lease is lost");
    drop(transaction);
    let StoreError::Backend { source, .. } = &error else {
        panic!("expected a backend error, got {error:?}")
    };
    let lost = source
        .downcast_ref::<LockLost>()
        .expect("the source says why");
    assert_eq!(lost.projection, "balances");
    assert!(
        error.to_string().contains("no longer holds its lease"),
        "{error}"
    );
    assert!(
        balances(&temp.store).await.is_empty(),
        "nothing of the batch was committed"
    );
    assert_eq!(temp.store.load_checkpoint("balances").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tailing_wakes_on_appends_and_stops_gracefully() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = temp.store.clone();
    let projection = Balances::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A long idle timeout: only the append notification (or the 1 s polling for other
    // processes) can wake it.
    let mut runner = ProjectionRunner::new(store.clone(), projection.clone())
        .idle_timeout(Duration::from_secs(60));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    open(&store, "a").await;
    for n in 1..=20 {
        deposit(&store, "a", n).await;
    }
    let started = std::time::Instant::now();
    eventually("the tailing runner caught up", async || {
        balances(&store).await.get("a") == Some(&210)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "woken by the appends"
    );
    stop.send(()).unwrap();
    let checkpoint = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint, last_position(&store).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tailing_sees_appends_of_another_process_by_polling() {
    let options = SqliteOptions::new().max_poll_interval(Duration::from_millis(40));
    let temp = store_with_read_model(options.clone()).await;
    let writer = temp.second_instance(SqliteOptions::new()).await;
    let projection = Balances::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner = ProjectionRunner::new(temp.store.clone(), projection.clone())
        .idle_timeout(Duration::from_secs(60));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    open(&writer, "a").await;
    deposit(&writer, "a", 5).await;
    let started = std::time::Instant::now();
    eventually("the runner saw the other instance's appends", async || {
        balances(&temp.store).await.get("a") == Some(&5)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "polled, not woken by the idle timeout"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    writer.close().await;
}
