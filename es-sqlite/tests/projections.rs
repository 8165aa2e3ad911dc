//! What the projection conformance suite cannot say about SQLite: the lease behind the lock
//! (a dead holder is taken over once its lease runs out, the fence renews a current lease and
//! refuses an expired one, a stopped runner's row is gone before the store closes) and live
//! tailing of another process's appends, which only polling can see.

mod common;

use std::time::Duration;

use common::{TempStore, account, raw};
use es_core::projection::{HandlerError, Projection, ProjectionRunner, ProjectionStore};
use es_core::{EventStore, ExpectedVersion, LogScope, Position, RecordedEvent, StoreError};
use es_examples::bank::AccountEvent;
use es_sqlite::{SqliteOptions, SqliteStore};
use sqlx::Sqlite;

/// Records the id of every account event it handles in the `handled` table, through the
/// runner's transaction.
#[derive(Debug, Clone, Copy)]
struct Handled;

impl Projection<SqliteStore> for Handled {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "handled"
    }

    async fn handle(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, Sqlite>,
        _event: &AccountEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO handled (event_id) VALUES (?1)")
            .bind(envelope.event_id.to_string())
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn reset(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, Sqlite>,
    ) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM handled")
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }
}

/// A store with the read model's table in the same file.
async fn store_with_read_model(options: SqliteOptions) -> TempStore {
    let temp = TempStore::with_options(options).await;
    sqlx::query("CREATE TABLE handled (event_id TEXT PRIMARY KEY) STRICT")
        .execute(temp.store.pool())
        .await
        .unwrap();
    temp
}

async fn handled(store: &SqliteStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM handled")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn deposit(store: &SqliteStore, id: &str, amount: i64) {
    store
        .append(
            account(id),
            ExpectedVersion::Any,
            vec![raw("Deposited", serde_json::json!({ "amount": amount }))],
        )
        .await
        .unwrap();
}

async fn heartbeat_at(store: &SqliteStore, projection: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT heartbeat_at FROM es_projection_locks WHERE projection = ?1")
        .bind(projection)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lock_whose_holder_died_is_taken_over_after_the_lease() {
    let lease = Duration::from_millis(300);
    let temp = store_with_read_model(SqliteOptions::new().lock_lease(lease)).await;
    let crashed = temp
        .second_instance(SqliteOptions::new().lock_lease(lease))
        .await;
    let lock = crashed
        .try_lock("handled")
        .await
        .unwrap()
        .expect("free at first");
    // The holder's process dies: no more heartbeats, and no release.
    crashed.close().await;
    drop(lock);

    assert!(
        temp.store.try_lock("handled").await.unwrap().is_none(),
        "the lease is still current"
    );
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let taken = temp.store.try_lock("handled").await.unwrap();
    assert!(taken.is_some(), "the expired lease is taken over");
}

/// Every fenced commit renews the lease, so a runner whose batches keep committing keeps its
/// projection even while its heartbeat task waits; a lease that ran out fails the fence even
/// when nobody took the projection over yet, since someone may at any moment.
#[tokio::test]
async fn the_fence_renews_a_current_lease_and_refuses_an_expired_one() {
    let temp = store_with_read_model(SqliteOptions::new()).await;
    let store = &temp.store;
    let lock = store
        .try_lock("handled")
        .await
        .unwrap()
        .expect("free at first");
    sqlx::query("UPDATE es_projection_locks SET heartbeat_at = heartbeat_at - 10000000")
        .execute(store.pool())
        .await
        .unwrap();
    let before = heartbeat_at(store, "handled").await.unwrap();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    store.fence(&mut transaction, &lock).await.expect("current");
    store.commit(transaction).await.unwrap();
    let renewed = heartbeat_at(store, "handled").await.unwrap();
    assert!(
        renewed >= before + 10_000_000,
        "the fence renewed the lease: {before} -> {renewed}"
    );

    sqlx::query("UPDATE es_projection_locks SET heartbeat_at = 0")
        .execute(store.pool())
        .await
        .unwrap();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    let lost = store.fence(&mut transaction, &lock).await;
    assert!(
        matches!(&lost, Err(StoreError::LockLost { projection }) if projection == "handled"),
        "{lost:?}"
    );
    drop(transaction);
    assert_eq!(
        heartbeat_at(store, "handled").await,
        Some(0),
        "a refused fence renews nothing"
    );
}

/// A runner that stopped deleted its lock row before it returned: closing the store right
/// after leaves nothing behind, and the next process takes the projection at once, however
/// long the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_runner_leaves_no_lock_behind_when_the_store_closes_at_once() {
    let options = SqliteOptions::new().lock_lease(Duration::from_secs(600));
    let temp = store_with_read_model(options.clone()).await;
    deposit(&temp.store, "a", 1).await;
    for round in 0..5 {
        let process = temp.second_instance(options.clone()).await;
        let mut runner = ProjectionRunner::new(process.clone(), Handled);
        runner
            .catch_up()
            .await
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        drop(runner);
        process.close().await;
        assert_eq!(
            heartbeat_at(&temp.store, "handled").await,
            None,
            "round {round}: the lock row is gone"
        );
        deposit(&temp.store, "a", round + 2).await;
    }
    assert_eq!(handled(&temp.store).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tailing_sees_appends_of_another_process_by_polling() {
    let options = SqliteOptions::new().max_poll_interval(Duration::from_millis(40));
    let temp = store_with_read_model(options.clone()).await;
    let writer = temp.second_instance(SqliteOptions::new()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner =
        ProjectionRunner::new(temp.store.clone(), Handled).idle_timeout(Duration::from_secs(60));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    deposit(&writer, "a", 5).await;
    let started = std::time::Instant::now();
    while handled(&temp.store).await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "polled, not woken by the idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    let reached = running.await.unwrap().unwrap();
    let last = common::whole_log(&temp.store)
        .await
        .last()
        .unwrap()
        .position;
    assert_eq!(reached, last);
    assert!(reached > Position::START);
    writer.close().await;
}
