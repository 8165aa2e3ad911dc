//! The inbox on PostgreSQL (a fresh schema per test): a consumer's SQL writes and its inbox row
//! commit together or not at all, a second delivery of the same event changes nothing, and two
//! transactions recording one event at once record it once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use es_core::integration::{
    Consumer, InboxStore, MemoryBus, MemorySubscription, Message, Outcome, Publisher, Relay,
    Subscription, headers,
};
use es_core::projection::{HandlerError, Projection, ProjectionStore, RetryPolicy};
use es_core::sql::{SqlStore, SqlValue};
use es_core::{
    CommandContext, Event, EventStore, ExpectedVersion, LogScope, MemoryStore, NewEvent,
    RecordedEvent, StreamKey,
};
use es_postgres::{PgStore, testing};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Event)]
pub enum PaymentEvent {
    Received { account: String, cents: i64 },
}

/// Credits accounts in SQL, through the consumer's transaction; can be told to fail after its
/// write.
struct Credits {
    table: String,
    fail_after_write: Arc<AtomicBool>,
}

impl<S: SqlStore + InboxStore> Projection<S> for Credits {
    type Event = PaymentEvent;

    fn name(&self) -> &str {
        "credits"
    }

    async fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &PaymentEvent,
        _: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let PaymentEvent::Received { account, cents } = event;
        S::execute(
            transaction,
            &format!(
                "INSERT INTO {} (account, cents) VALUES ($1, $2)",
                self.table
            ),
            &[SqlValue::from(account), SqlValue::Int(*cents)],
        )
        .await?;
        if self.fail_after_write.load(Ordering::SeqCst) {
            return Err("the credit service is down".into());
        }
        Ok(())
    }

    async fn reset(&mut self, transaction: &mut S::Transaction) -> Result<(), HandlerError> {
        S::execute(transaction, &format!("DELETE FROM {}", self.table), &[]).await?;
        Ok(())
    }
}

async fn count(store: &PgStore, statement: &str) -> i64 {
    let rows = store.query(statement, &[]).await.unwrap();
    rows[0]["n"].as_i64().unwrap()
}

fn table(store: &PgStore, name: &str) -> String {
    format!("\"{}\".{name}", store.schema())
}

async fn credits(store: &PgStore) -> i64 {
    count(
        store,
        &format!("SELECT count(*) AS n FROM {}", table(store, "credits")),
    )
    .await
}

async fn inbox(store: &PgStore) -> i64 {
    count(
        store,
        &format!("SELECT count(*) AS n FROM {}", table(store, "inbox")),
    )
    .await
}

/// Payments published by another service onto a bus.
async fn published(payments: &[(&str, i64)]) -> MemoryBus {
    let producer = MemoryStore::new();
    for (account, cents) in payments {
        let event = PaymentEvent::Received {
            account: (*account).into(),
            cents: *cents,
        };
        producer
            .append(
                StreamKey::new("payment", &Uuid::new_v4().to_string()),
                ExpectedVersion::NoStream,
                vec![NewEvent::encode(&event, &CommandContext::new().metadata()).unwrap()],
            )
            .await
            .unwrap();
    }
    let bus = MemoryBus::new();
    Relay::new(producer, bus.clone(), "payments")
        .publish_pending()
        .await
        .unwrap();
    bus
}

async fn fresh_store() -> PgStore {
    let store = testing::store().await;
    let accounts = table(&store, "accounts");
    store
        .run(
            &format!("CREATE TABLE {accounts} (id text PRIMARY KEY)"),
            &[],
        )
        .await
        .unwrap();
    // The reference is checked at commit: a commit that fails after the handler succeeded.
    store
        .run(
            &format!(
                "CREATE TABLE {} (account text NOT NULL \
                   REFERENCES {accounts} (id) DEFERRABLE INITIALLY DEFERRED, cents bigint NOT NULL)",
                table(&store, "credits")
            ),
            &[],
        )
        .await
        .unwrap();
    store
        .run(
            &format!("INSERT INTO {accounts} (id) VALUES ('acc-1')"),
            &[],
        )
        .await
        .unwrap();
    store
}

fn consumer(
    store: PgStore,
    bus: &MemoryBus,
    fail: &Arc<AtomicBool>,
) -> Consumer<PgStore, Credits, MemorySubscription, MemoryBus> {
    let credits = table(&store, "credits");
    Consumer::new(
        store,
        Credits {
            table: credits,
            fail_after_write: fail.clone(),
        },
        bus.subscribe("credits", "es.payment.>").unwrap(),
        bus.clone(),
    )
    .retry(RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    })
}

#[tokio::test]
async fn the_handlers_writes_and_the_inbox_row_commit_together_or_not_at_all() {
    let store = fresh_store().await;
    let bus = published(&[("acc-1", 500), ("acc-2", 700)]).await;
    let fail = Arc::new(AtomicBool::new(true));
    let mut consumer = consumer(store.clone(), &bus, &fail);

    // The handler writes, then fails: its write and the inbox row roll back together.
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(
        matches!(&outcome, Some(Outcome::Retrying { attempt: 1, error }) if error.contains("credit service is down")),
        "{outcome:?}"
    );
    assert_eq!((credits(&store).await, inbox(&store).await), (0, 0));

    // Delivered again once its retry delay passed (a due redelivery comes before new
    // messages) and handled: one credit, one inbox row.
    fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!((credits(&store).await, inbox(&store).await), (1, 1));

    // The commit fails (an unknown account, checked at commit): nothing of it stays.
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(
        matches!(&outcome, Some(Outcome::Retrying { attempt: 1, error }) if error.contains("commit")),
        "{outcome:?}"
    );
    assert_eq!((credits(&store).await, inbox(&store).await), (1, 1));
    store
        .run(
            &format!(
                "INSERT INTO {} (id) VALUES ('acc-2')",
                table(&store, "accounts")
            ),
            &[],
        )
        .await
        .unwrap();
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!((credits(&store).await, inbox(&store).await), (2, 2));

    // The first payment delivered again under a new message id: nothing changes.
    let mut again: Message = bus.published()[0].clone();
    again.headers.retain(|(name, _)| name != headers::MSG_ID);
    again
        .headers
        .push((headers::MSG_ID.into(), "redelivered".into()));
    bus.publish(again).await.unwrap().await.unwrap();
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Duplicate)), "{outcome:?}");
    assert_eq!((credits(&store).await, inbox(&store).await), (2, 2));
    let total = store
        .query(
            &format!(
                "SELECT sum(cents)::bigint AS n FROM {}",
                table(&store, "credits")
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(total[0]["n"], 1200);
    assert_eq!(consumer.subscription_mut().pending().await.unwrap(), 0);

    // Another consumer keeps an inbox of its own.
    let first = bus.published()[0].to_event().unwrap().event_id;
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        !store
            .record_processed(&mut transaction, "credits", first)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_processed(&mut transaction, "another-consumer", first)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn record_processed_is_undone_by_a_rollback_and_kept_by_a_commit() {
    let store = fresh_store().await;
    let id = Uuid::new_v4();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        store
            .record_processed(&mut transaction, "c", id)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_processed(&mut transaction, "c", id)
            .await
            .unwrap()
    );
    drop(transaction);
    assert_eq!(inbox(&store).await, 0, "rolled back");
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        store
            .record_processed(&mut transaction, "c", id)
            .await
            .unwrap()
    );
    store.commit(transaction).await.unwrap();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        !store
            .record_processed(&mut transaction, "c", id)
            .await
            .unwrap()
    );
    let rows = store
        .query(
            &format!(
                "SELECT consumer, event_id::text AS event_id FROM {}",
                table(&store, "inbox")
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["event_id"], id.to_string());
}

/// Two transactions record one event at once: the second waits for the first, and finds the
/// event processed once the first commits; had the first rolled back, the second records it.
#[tokio::test]
async fn concurrent_transactions_record_an_event_once() {
    let store = fresh_store().await;
    let id = Uuid::new_v4();
    let mut first = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(store.record_processed(&mut first, "c", id).await.unwrap());
    let racing = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut second = store.begin(LogScope::AllTenants).await.unwrap();
            let recorded = store.record_processed(&mut second, "c", id).await.unwrap();
            store.commit(second).await.unwrap();
            recorded
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !racing.is_finished(),
        "the second insert waits for the first transaction"
    );
    store.commit(first).await.unwrap();
    assert!(
        !racing.await.unwrap(),
        "the second found the event processed"
    );

    let other = Uuid::new_v4();
    let mut first = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        store
            .record_processed(&mut first, "c", other)
            .await
            .unwrap()
    );
    let racing = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut second = store.begin(LogScope::AllTenants).await.unwrap();
            let recorded = store
                .record_processed(&mut second, "c", other)
                .await
                .unwrap();
            store.commit(second).await.unwrap();
            recorded
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);
    let recorded = tokio::time::timeout(Duration::from_secs(10), racing)
        .await
        .expect("the rollback released the second transaction");
    assert!(
        recorded.unwrap(),
        "the first rolled back: the second records it"
    );
    assert_eq!(inbox(&store).await, 2);
}

/// A relay publishes the store's log, keeps its checkpoint in it, and holds its lock there.
#[tokio::test]
async fn a_relay_publishes_the_log_and_keeps_its_checkpoint_in_the_store() {
    let store = fresh_store().await;
    for cents in [100, 200, 300] {
        let event = PaymentEvent::Received {
            account: "acc-1".into(),
            cents,
        };
        store
            .append(
                StreamKey::new("payment", "p-1"),
                ExpectedVersion::Any,
                vec![NewEvent::encode(&event, &CommandContext::new().metadata()).unwrap()],
            )
            .await
            .unwrap();
    }
    let bus = MemoryBus::new();
    let mut relay = Relay::new(store.clone(), bus.clone(), "payments").max_in_flight(2);
    let lock = store
        .try_lock("relay:payments")
        .await
        .unwrap()
        .expect("free");
    let error = relay.publish_pending().await.unwrap_err();
    assert!(
        matches!(
            error,
            es_core::integration::RelayError::AlreadyRunning { .. }
        ),
        "{error:?}"
    );
    store.release(lock).await.unwrap();
    let summary = relay.publish_pending().await.unwrap();
    assert_eq!(summary.published, 3);
    let log = store
        .read_all(LogScope::AllTenants, es_core::Position::START, 10)
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("relay:payments").await.unwrap(),
        Some(log[2].position)
    );
    let published = bus.published();
    let versions: Vec<Option<&str>> = published
        .iter()
        .map(|m| m.header(headers::STREAM_VERSION))
        .collect();
    assert_eq!(versions, [Some("1"), Some("2"), Some("3")]);
    let again = Relay::new(store.clone(), bus.clone(), "payments")
        .lag()
        .await
        .unwrap();
    assert_eq!((again.checkpoint, again.behind), (log[2].position, 0));
    let _: &PgStore = relay.store();
}
