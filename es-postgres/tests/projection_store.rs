//! `PgStore` as a `ProjectionStore`: checkpoints committed with a SQL read model, dead letters,
//! the per-projection lock, live notification, and a runner feeding a read-model table.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{eventually, raw_insert};
use es_core::conformance::events;
use es_core::projection::{
    DeadLetter, HandlerError, Projection, ProjectionRunner, ProjectionStore,
};
use es_core::{CommandContext, EventStore, ExpectedVersion, Position, RecordedEvent, Repository};
use es_examples::bank::{Account, AccountEvent, Deposit, Open};
use es_postgres::{PgStore, testing};
use uuid::Uuid;

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

    let mut transaction = store.begin().await.unwrap();
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

    let mut transaction = store.begin().await.unwrap();
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
    let mut transaction = store.begin().await.unwrap();
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
    let mut transaction = store.begin().await.unwrap();
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
            &round_trip.stream_id,
            round_trip.stream_version
        ),
        (&late.event_id, &late.stream_id, late.stream_version)
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
    let mut transaction = store.begin().await.unwrap();
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

    let mut transaction = store.begin().await.unwrap();
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

/// Events are found by position; counts follow the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_event_and_count_after() {
    let store = testing::store().await;
    store
        .append("raw", "a", ExpectedVersion::Any, events(1, 3))
        .await
        .unwrap();
    store
        .append("raw", "b", ExpectedVersion::Any, events(4, 2))
        .await
        .unwrap();
    let log = store.read_all(Position::START, 100).await.unwrap();
    assert_eq!(store.count_after(Position::START).await.unwrap(), 5);
    assert_eq!(store.count_after(log[1].position).await.unwrap(), 3);
    assert_eq!(store.count_after(log[4].position).await.unwrap(), 0);
    for event in &log {
        assert_eq!(
            store.read_event(event.position).await.unwrap().as_ref(),
            Some(event)
        );
    }
    let missing = Position {
        transaction: log[0].position.transaction,
        sequence: 999_999,
    };
    assert_eq!(store.read_event(missing).await.unwrap(), None);
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
        .append("raw", "s", ExpectedVersion::Any, events(1, 1))
        .await
        .unwrap();
}

/// The backend holding the advisory lock of `projection` (the key es-postgres derives from the
/// schema and projection name).
async fn lock_holder(store: &PgStore, projection: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((classid::bigint << 32) | objid::bigint) = ('x' || left(md5($1), 16))::bit(64)::bigint",
    )
    .bind(format!("es-postgres projection {}.{projection}", store.schema()))
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

async fn terminate(store: &PgStore, pid: i32) {
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(terminated);
    eventually("the lock to go with its backend", || async {
        lock_holder(store, "balances").await.is_none().then_some(())
    })
    .await;
}

/// A runner whose lock was lost (its connection killed) while another process took the
/// projection over cannot commit its batch: the checkpoint write fails with `LockLost` and the
/// read-model writes roll back with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_fences_the_batch() {
    let store = testing::store().await;
    let table = create_balances(&store).await;
    // Another process: another store (and pool) on the same schema.
    let successor_store = PgStore::new(testing::pool().await)
        .with_schema(store.schema())
        .unwrap();
    let lock = store.try_lock("balances").await.unwrap().expect("free");
    let mut batch = store.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES ('a', 1)"))
        .execute(&mut *batch)
        .await
        .unwrap();
    terminate(&store, lock_holder(&store, "balances").await.unwrap()).await;
    let successor = successor_store.try_lock("balances").await.unwrap();
    assert!(
        successor.is_some(),
        "the projection is free once the lock is gone"
    );
    let fenced = store
        .save_checkpoint(
            &mut batch,
            "balances",
            Position {
                transaction: 1,
                sequence: 1,
            },
        )
        .await;
    match fenced {
        Err(es_core::StoreError::Backend { source, .. }) => {
            let lost = source
                .downcast_ref::<es_postgres::LockLost>()
                .expect("the source is LockLost");
            assert_eq!(lost.projection, "balances");
        }
        other => panic!("expected the batch to be fenced, got {other:?}"),
    }
    drop(batch);
    assert!(
        balances(&store, &table).await.is_empty(),
        "the read-model write rolled back"
    );
    assert_eq!(store.load_checkpoint("balances").await.unwrap(), None);
    drop(lock);
}

/// A batch that passed its lock check commits even if the lock is lost right after; a new
/// runner cannot take the projection until that commit is done, so it reads the new checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_holder_waits_for_the_last_batch_of_the_old_one() {
    let store = testing::store().await;
    let successor_store = PgStore::new(testing::pool().await)
        .with_schema(store.schema())
        .unwrap();
    let position = Position {
        transaction: 1,
        sequence: 1,
    };
    let lock = store.try_lock("balances").await.unwrap().expect("free");
    let mut batch = store.begin().await.unwrap();
    store
        .save_checkpoint(&mut batch, "balances", position)
        .await
        .unwrap();
    terminate(&store, lock_holder(&store, "balances").await.unwrap()).await;
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
        .wait_for_events(Position::START, Duration::from_millis(300))
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
                .append("raw", "s", ExpectedVersion::Any, events(1, 1))
                .await
                .unwrap()
        })
    };
    let started = Instant::now();
    store.wait_for_events(Position::START, long).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the append"
    );
    let appended = appender.await.unwrap().range().last_position;
    let started = Instant::now();
    store.wait_for_events(Position::START, long).await.unwrap();
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
        .wait_for_events(appended, Duration::from_millis(500))
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
                .append("raw", "s", ExpectedVersion::Any, events(2, 1))
                .await
                .unwrap();
        })
    };
    let started = Instant::now();
    store.wait_for_events(appended, long).await.unwrap();
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
    raw_insert(&mut older, &store, "older", 1, 0).await;
    store
        .append("raw", "s", ExpectedVersion::Any, events(1, 1))
        .await
        .unwrap();
    let started = Instant::now();
    store
        .wait_for_events(Position::START, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "polled, not slept"
    );
    older.commit().await.unwrap();
}

/// A read model in the store's database, fed by the runner through the batch's transaction.
#[derive(Debug)]
struct Balances {
    table: String,
}

impl Projection<PgStore> for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn handle(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        event: &AccountEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let table = &self.table;
        let (sql, amount) = match event {
            AccountEvent::Opened(_) => (format!("INSERT INTO {table} VALUES ($1, 0)"), 0),
            AccountEvent::Deposited(d) => (
                format!("UPDATE {table} SET balance = balance + $2 WHERE account = $1"),
                d.amount,
            ),
            AccountEvent::Withdrawn(w) => (
                format!("UPDATE {table} SET balance = balance - $2 WHERE account = $1"),
                w.amount,
            ),
            AccountEvent::Closed => return Ok(()),
        };
        sqlx::query(&sql)
            .bind(&envelope.stream_id)
            .bind(amount)
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn reset(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {}", self.table))
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }
}

/// The runner catches up, tails live (woken by notifications), and rebuilds, with the read model
/// and checkpoint committed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_feeds_a_sql_read_model() {
    let store = testing::store().await;
    let table = create_balances(&store).await;
    let accounts = Repository::<Account, _>::new(store.clone());
    let context = CommandContext::new();
    for id in ["account-1", "account-2"] {
        accounts
            .execute(
                id,
                &Open {
                    owner: id.to_owned(),
                },
                &context,
            )
            .await
            .unwrap();
        accounts.execute(id, &Deposit(10), &context).await.unwrap();
    }
    let mut runner = ProjectionRunner::new(
        store.clone(),
        Balances {
            table: table.clone(),
        },
    )
    .batch_size(3)
    .idle_timeout(Duration::from_secs(30));
    let checkpoint = runner.catch_up().await.unwrap();
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(checkpoint)
    );
    let expected = [("account-1".to_owned(), 10), ("account-2".to_owned(), 10)];
    assert_eq!(balances(&store, &table).await, expected);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let live = tokio::spawn(async move {
        let result = runner
            .run(async {
                let _ = stopped.await;
            })
            .await;
        (runner, result)
    });
    accounts
        .execute("account-1", &Deposit(5), &context)
        .await
        .unwrap();
    // The idle timeout is 30 s: seeing the deposit sooner means a notification woke the runner.
    let started = Instant::now();
    eventually("the live runner to apply the deposit", || async {
        (balances(&store, &table).await[0].1 == 15).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    stop.send(()).unwrap();
    let (mut runner, result) = live.await.unwrap();
    result.unwrap();

    let rebuilt = runner.rebuild(|_| {}).await.unwrap();
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(rebuilt)
    );
    let expected = [("account-1".to_owned(), 15), ("account-2".to_owned(), 10)];
    assert_eq!(
        balances(&store, &table).await,
        expected,
        "the rebuild applied each event once"
    );
}
