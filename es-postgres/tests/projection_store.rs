//! `PgStore` as a `ProjectionStore`, below the runner (whose behaviour the projection
//! conformance suite checks, in `conformance.rs`): checkpoints committed with a SQL read model,
//! dead letters, counts by scope, the per-projection lock and what a new holder waits for, and
//! live notification.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{eventually, raw_insert};
use es_core::conformance::events;
use es_core::projection::{DeadLetter, ProjectionStore};
use es_core::{EventStore, ExpectedVersion, LogScope, Position, StreamKey};
use es_postgres::{PgStore, testing};
use uuid::Uuid;

fn key(id: &str) -> StreamKey<'_> {
    StreamKey::new("raw", id)
}

async fn create_balances(store: &PgStore) -> String {
    let table = format!("\"{}\".balances", store.schema());
    sqlx::query(&format!(
        "CREATE TABLE {table} (account text PRIMARY KEY, balance bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    table
}

async fn balances(store: &PgStore, table: &str) -> Vec<(String, i64)> {
    sqlx::query_as(&format!(
        "SELECT account, balance FROM {table} ORDER BY account"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// A read-model write and the checkpoint share one transaction: both or neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_commits_with_the_read_model() {
    let store = testing::store().await;
    let table = create_balances(&store).await;
    let position = Position {
        transaction: 42,
        sequence: 7,
    };
    assert_eq!(store.load_checkpoint("balances").await.unwrap(), None);

    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES ('a', 1)"))
        .execute(&mut *transaction)
        .await
        .unwrap();
    store
        .save_checkpoint(&mut transaction, "balances", position)
        .await
        .unwrap();
    drop(transaction);
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        None,
        "rolled back"
    );
    assert!(
        balances(&store, &table).await.is_empty(),
        "rolled back with it"
    );

    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES ('a', 1)"))
        .execute(&mut *transaction)
        .await
        .unwrap();
    store
        .save_checkpoint(&mut transaction, "balances", position)
        .await
        .unwrap();
    store.commit(transaction).await.unwrap();
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(position)
    );
    assert_eq!(balances(&store, &table).await, [("a".to_owned(), 1)]);

    let later = Position {
        transaction: u64::from(u32::MAX) + 5,
        sequence: 8,
    };
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    store
        .save_checkpoint(&mut transaction, "balances", later)
        .await
        .unwrap();
    store.commit(transaction).await.unwrap();
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(later),
        "replaced, 64-bit"
    );
}

fn letter(projection: &str, transaction: u64, sequence: u64, attempts: u32) -> DeadLetter {
    DeadLetter {
        projection: projection.to_owned(),
        position: Position {
            transaction,
            sequence,
        },
        event_id: Uuid::new_v4(),
        tenant: "acme".to_owned(),
        stream_type: "order".to_owned(),
        stream_id: "s".to_owned(),
        stream_version: sequence,
        event_type: "Tested".to_owned(),
        error: "handler failed".to_owned(),
        attempts,
        parked_at: Utc::now(),
    }
}

/// Parked events list in log order, replace per position, leave on unpark and on reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_park_list_unpark_reset() {
    let store = testing::store().await;
    let late = letter("p", 9, 1, 3);
    let early = letter("p", 5, 2, 3);
    let other = letter("q", 5, 2, 1);
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    for letter in [&late, &early, &other] {
        store.park(&mut transaction, letter).await.unwrap();
    }
    store
        .save_checkpoint(&mut transaction, "p", late.position)
        .await
        .unwrap();
    store.commit(transaction).await.unwrap();
    let listed = store.dead_letters("p").await.unwrap();
    let positions: Vec<Position> = listed.iter().map(|l| l.position).collect();
    assert_eq!(positions, [early.position, late.position], "log order");
    let round_trip = &listed[1];
    assert_eq!(
        (
            &round_trip.event_id,
            &round_trip.tenant,
            &round_trip.stream_type,
            &round_trip.stream_id,
            round_trip.stream_version
        ),
        (
            &late.event_id,
            &late.tenant,
            &late.stream_type,
            &late.stream_id,
            late.stream_version
        )
    );
    assert_eq!(
        (round_trip.error.as_str(), round_trip.attempts),
        ("handler failed", 3)
    );
    assert!(
        (round_trip.parked_at - late.parked_at)
            .num_milliseconds()
            .abs()
            < 1
    );

    let mut retried = early.clone();
    retried.attempts = 4;
    retried.error = "still failing".to_owned();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    store.park(&mut transaction, &retried).await.unwrap();
    store
        .unpark(&mut transaction, "p", late.position)
        .await
        .unwrap();
    store.commit(transaction).await.unwrap();
    let listed = store.dead_letters("p").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].attempts, listed[0].error.as_str()),
        (4, "still failing")
    );

    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    store.reset_projection(&mut transaction, "p").await.unwrap();
    store.commit(transaction).await.unwrap();
    assert!(store.dead_letters("p").await.unwrap().is_empty());
    assert_eq!(store.load_checkpoint("p").await.unwrap(), None);
    assert_eq!(
        store.dead_letters("q").await.unwrap().len(),
        1,
        "other projections untouched"
    );
}

/// Counts follow the log of every tenant, or of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_after_counts_the_log_of_the_scope() {
    let store = testing::store().await;
    store
        .append(key("a"), ExpectedVersion::Any, events(1, 3))
        .await
        .unwrap();
    store
        .append(
            key("b").in_tenant("acme"),
            ExpectedVersion::Any,
            events(4, 2),
        )
        .await
        .unwrap();
    let log = store
        .read_all(LogScope::AllTenants, Position::START, 100)
        .await
        .unwrap();
    let acme = LogScope::Tenant("acme");
    for (scope, after, expected) in [
        (LogScope::AllTenants, Position::START, 5),
        (LogScope::AllTenants, log[1].position, 3),
        (LogScope::AllTenants, log[4].position, 0),
        (acme, Position::START, 2),
        (acme, log[3].position, 1),
        (LogScope::Tenant("default"), log[1].position, 1),
        (LogScope::Tenant("nobody"), Position::START, 0),
        (LogScope::Tenant("a\0b"), Position::START, 0),
    ] {
        assert_eq!(
            store.count_after(scope, after).await.unwrap(),
            expected,
            "{scope} after {after}"
        );
    }
}

/// One holder per projection (per schema); released on `release` or drop; lock connections do
/// not use up the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_lock() {
    let store = testing::store().await;
    let held = store.try_lock("p").await.unwrap().expect("free at first");
    assert!(store.try_lock("p").await.unwrap().is_none(), "held");
    let other_schema = testing::store_on(store.pool().clone()).await;
    let elsewhere = other_schema.try_lock("p").await.unwrap();
    assert!(
        elsewhere.is_some(),
        "same name in another schema is another projection"
    );
    held.release().await.unwrap();
    let again = store.try_lock("p").await.unwrap().expect("released");
    drop(again);
    // The server releases a dropped lock when it sees the connection close.
    let _taken = eventually("a dropped lock to be released", || async {
        store.try_lock("p").await.unwrap()
    })
    .await;

    // More locks than the pool has connections, and the pool still serves.
    let mut locks = Vec::new();
    for i in 0..(testing::MAX_CONNECTIONS + 2) {
        locks.push(
            store
                .try_lock(&format!("many-{i}"))
                .await
                .unwrap()
                .expect("free"),
        );
    }
    store
        .append(key("s"), ExpectedVersion::Any, events(1, 1))
        .await
        .unwrap();
}

/// A batch that passed its fence commits even if the lock is lost right after; a new runner
/// cannot take the projection until that commit is done, so it reads the new checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_holder_waits_for_the_last_batch_of_the_old_one() {
    let store = testing::store().await;
    // Another process: another store (and pool) on the same schema.
    let successor_store = PgStore::with_options(testing::pool().await, store.options().clone());
    let position = Position {
        transaction: 1,
        sequence: 1,
    };
    let lock = store.try_lock("balances").await.unwrap().expect("free");
    let mut batch = store.begin(LogScope::AllTenants).await.unwrap();
    store
        .fence(&mut batch, &lock)
        .await
        .expect("the lock is held");
    store
        .save_checkpoint(&mut batch, "balances", position)
        .await
        .unwrap();
    testing::break_lock(&store, "balances").await;
    assert!(
        successor_store
            .try_lock("balances")
            .await
            .unwrap()
            .is_none(),
        "the old holder's last batch is still open"
    );
    store.commit(batch).await.unwrap();
    let successor = successor_store.try_lock("balances").await.unwrap();
    assert!(successor.is_some());
    assert_eq!(
        successor_store.load_checkpoint("balances").await.unwrap(),
        Some(position)
    );
    // The old holder's next batch is fenced off.
    let mut late = store.begin(LogScope::AllTenants).await.unwrap();
    match store.fence(&mut late, &lock).await {
        Err(es_core::StoreError::LockLost { projection }) => assert_eq!(projection, "balances"),
        other => panic!("expected the late batch to be fenced, got {other:?}"),
    }
    drop(lock);
}

/// Waiting wakes on an append, returns at once when events are already there, times out when
/// nothing comes, and survives its listener connection being killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_events_wakes_on_append() {
    let store = testing::store().await;
    let long = Duration::from_secs(30);

    let started = Instant::now();
    store
        .wait_for_events(
            LogScope::AllTenants,
            Position::START,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "nothing came: waited {waited:?}"
    );

    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store
                .append(key("s"), ExpectedVersion::Any, events(1, 1))
                .await
                .unwrap()
        })
    };
    let started = Instant::now();
    store
        .wait_for_events(LogScope::AllTenants, Position::START, long)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the append"
    );
    let appended = appender.await.unwrap().range().last_position;
    let started = Instant::now();
    store
        .wait_for_events(LogScope::AllTenants, Position::START, long)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "events already there"
    );

    // Kill the listener's backend: the next waits still wake on appends.
    let listen = format!("LISTEN \"{}\"", store.channel());
    let killed: i32 =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE starts_with(query, $1)")
            .bind(&listen)
            .fetch_one(store.pool())
            .await
            .expect("the listener is connected");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(killed)
        .execute(store.pool())
        .await
        .unwrap();
    // The first wait may end early on the reconnection itself (a spurious wake-up is allowed).
    store
        .wait_for_events(LogScope::AllTenants, appended, Duration::from_millis(500))
        .await
        .unwrap();
    let pool = store.pool().clone();
    eventually("the listener to reconnect", || {
        let (pool, listen) = (pool.clone(), listen.clone());
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT pid FROM pg_stat_activity WHERE starts_with(query, $1) AND pid <> $2",
            )
            .bind(listen)
            .bind(killed)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store
                .append(key("s"), ExpectedVersion::Any, events(2, 1))
                .await
                .unwrap();
        })
    };
    let started = Instant::now();
    store
        .wait_for_events(LogScope::AllTenants, appended, long)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken after the listener came back"
    );
    appender.await.unwrap();
}

/// While an older transaction holds committed events back, no notification will announce its
/// end: waiting polls instead of sleeping the whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_events_polls_while_held_back() {
    let store = testing::store().await;
    let mut older = store.pool().begin().await.unwrap();
    raw_insert(&mut older, &store, key("older"), 1, 0).await;
    store
        .append(key("s"), ExpectedVersion::Any, events(1, 1))
        .await
        .unwrap();
    let started = Instant::now();
    store
        .wait_for_events(
            LogScope::AllTenants,
            Position::START,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "polled, not slept"
    );
    older.commit().await.unwrap();
}

/// Waiting on one tenant's log returns at once for that tenant's events only; other tenants'
/// events already there leave it waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_tenant_looks_at_that_tenants_log() {
    let store = testing::store().await;
    // Start the listener, then let the append's notification come and go before the waits.
    store
        .wait_for_events(
            LogScope::AllTenants,
            Position::START,
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    store
        .append(
            key("s").in_tenant("globex"),
            ExpectedVersion::Any,
            events(1, 1),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    store
        .wait_for_events(
            LogScope::Tenant("globex"),
            Position::START,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the tenant's event is there"
    );
    let started = Instant::now();
    store
        .wait_for_events(
            LogScope::Tenant("acme"),
            Position::START,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "another tenant's event does not count: waited {waited:?}"
    );
}
