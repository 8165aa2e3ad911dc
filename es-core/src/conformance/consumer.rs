//! The SQL consumer conformance suite: on a store that is both a [`SqlStore`] and an
//! [`InboxStore`], a [`Consumer`]'s SQL writes and its inbox entry commit together or not at
//! all, a redelivered event changes nothing, and a [`Relay`] keeps its checkpoint and lock in
//! the store.
//!
//! ```ignore
//! es_core::sql_consumer_conformance_tests!(async { my_store().await });
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::projection::Tested;
use super::{append_to, event, events};
use crate::envelope::{Position, RecordedEvent};
use crate::integration::{
    Consumer, InboxStore, MemoryBus, Message, Outcome, Publisher, Relay, RelayError, Subscription,
    headers,
};
use crate::memory::MemoryStore;
use crate::projection::{HandlerError, Projection, ProjectionStore, RetryPolicy};
use crate::sql::{SqlStore, SqlValue};
use crate::store::ExpectedVersion;
use crate::stream::{LogScope, StreamKey};

/// Credits the account named by each numbered event's stream with `n` cents, in SQL through
/// the consumer's transaction; can be told to fail after its write.
struct Credits {
    table: String,
    fail_after_write: Arc<AtomicBool>,
}

impl<S: SqlStore + InboxStore> Projection<S> for Credits {
    type Event = Tested;

    fn name(&self) -> &str {
        "credits"
    }

    async fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &Tested,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        if let Tested::Numbered(cents) = event {
            let cents = i64::try_from(*cents)?;
            S::execute(
                transaction,
                &format!(
                    "INSERT INTO {} (account, cents) VALUES ($1, $2)",
                    self.table
                ),
                &[SqlValue::from(&envelope.stream_id), cents.into()],
            )
            .await?;
        }
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

async fn number<S: SqlStore>(store: &S, statement: &str) -> i64 {
    let rows = store.query(statement, &[]).await.unwrap();
    rows[0]["n"].as_i64().unwrap_or(0)
}

/// Whether the inbox of `consumer` already holds `event_id` (asked in a transaction that is
/// rolled back).
async fn processed<S: InboxStore>(store: &S, consumer: &str, event_id: uuid::Uuid) -> bool {
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    !store
        .record_processed(&mut transaction, consumer, event_id)
        .await
        .unwrap()
}

/// A consumer's SQL writes and its inbox entry commit together: a handler that fails after its
/// write leaves neither, a commit that fails (a deferred reference to a missing account) leaves
/// neither, and an event delivered again under a new message id changes nothing.
pub async fn a_consumers_writes_and_its_inbox_commit_together<S: SqlStore + InboxStore>(store: S) {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let accounts = format!("consumer_accounts_{suffix}");
    let credits = format!("consumer_credits_{suffix}");
    store
        .run(
            &format!("CREATE TABLE {accounts} (id TEXT PRIMARY KEY)"),
            &[],
        )
        .await
        .unwrap();
    // The reference is checked at commit: a commit that fails after the handler succeeded.
    store
        .run(
            &format!(
                "CREATE TABLE {credits} (account TEXT NOT NULL \
                 REFERENCES {accounts} (id) DEFERRABLE INITIALLY DEFERRED, cents BIGINT NOT NULL)"
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
    let count = format!("SELECT count(*) AS n FROM {credits}");

    // Another service's payments, relayed onto a bus.
    let producer = MemoryStore::new();
    for (account, cents) in [("acc-1", 500), ("acc-2", 700)] {
        append_to(
            &producer,
            StreamKey::new("payment", account),
            ExpectedVersion::NoStream,
            vec![event(cents)],
        )
        .await;
    }
    let bus = MemoryBus::new();
    Relay::new(producer, bus.clone(), "payments")
        .publish_pending()
        .await
        .unwrap();
    let first = bus.published()[0].to_event().unwrap().event_id;

    let fail = Arc::new(AtomicBool::new(true));
    let mut consumer = Consumer::new(
        store.clone(),
        Credits {
            table: credits.clone(),
            fail_after_write: fail.clone(),
        },
        bus.subscribe("credits", "es.payment.>").unwrap(),
        bus.clone(),
    )
    .retry(RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    });

    // The handler writes, then fails: its write and the inbox entry roll back together.
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(
        matches!(&outcome, Some(Outcome::Retrying { attempt: 1, error }) if error.contains("credit service is down")),
        "{outcome:?}"
    );
    assert_eq!(number(&store, &count).await, 0);
    assert!(!processed(&store, "credits", first).await);

    // Delivered again once its retry delay passed, and handled: one credit, in the inbox.
    fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!(number(&store, &count).await, 1);
    assert!(processed(&store, "credits", first).await);

    // The commit fails (an unknown account, checked at commit): nothing of it stays.
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(
        matches!(&outcome, Some(Outcome::Retrying { attempt: 1, error }) if error.contains("commit")),
        "{outcome:?}"
    );
    assert_eq!(number(&store, &count).await, 1);
    let second = bus.published()[1].to_event().unwrap().event_id;
    assert!(!processed(&store, "credits", second).await);
    store
        .run(
            &format!("INSERT INTO {accounts} (id) VALUES ('acc-2')"),
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outcome = consumer.process_next(Duration::from_secs(1)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!(number(&store, &count).await, 2);

    // The first payment delivered again under a new message id: nothing changes.
    let mut again: Message = bus.published()[0].clone();
    again.headers.retain(|(name, _)| name != headers::MSG_ID);
    again
        .headers
        .push((headers::MSG_ID.into(), "redelivered".into()));
    bus.publish(again).await.unwrap().await.unwrap();
    let outcome = consumer.process_next(Duration::ZERO).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Duplicate)), "{outcome:?}");
    assert_eq!(
        number(
            &store,
            &format!("SELECT CAST(sum(cents) AS BIGINT) AS n FROM {credits}")
        )
        .await,
        1200
    );
    assert_eq!(consumer.subscription_mut().pending().await.unwrap(), 0);
    // Inboxes are per consumer.
    assert!(!processed(&store, "another-consumer", first).await);

    drop(consumer);
    for table in [credits, accounts] {
        store
            .run(&format!("DROP TABLE {table}"), &[])
            .await
            .unwrap();
    }
}

/// A relay publishes the store's log in order, keeps its checkpoint in the store and its lock
/// there: while another holds the lock it is refused, and a new relay of the name resumes from
/// the checkpoint with nothing behind.
pub async fn a_relay_keeps_its_checkpoint_and_lock_in_the_store<S: ProjectionStore>(store: S) {
    append_to(
        &store,
        StreamKey::new("payment", "p-1"),
        ExpectedVersion::NoStream,
        events(100, 3),
    )
    .await;
    let bus = MemoryBus::new();
    let mut relay = Relay::new(store.clone(), bus.clone(), "payments").max_in_flight(2);
    let lock = store
        .try_lock("relay:payments")
        .await
        .unwrap()
        .expect("free");
    let error = relay.publish_pending().await.unwrap_err();
    assert!(
        matches!(error, RelayError::AlreadyRunning { .. }),
        "{error:?}"
    );
    store.release(lock).await.unwrap();
    let summary = relay.publish_pending().await.unwrap();
    assert_eq!(summary.published, 3);
    let log = store
        .read_all(LogScope::AllTenants, Position::START, 10)
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("relay:payments").await.unwrap(),
        Some(log[2].position)
    );
    let versions: Vec<Option<String>> = bus
        .published()
        .iter()
        .map(|m| m.header(headers::STREAM_VERSION).map(str::to_owned))
        .collect();
    assert_eq!(
        versions,
        [Some("1".into()), Some("2".into()), Some("3".into())]
    );
    let lag = Relay::new(store.clone(), bus.clone(), "payments")
        .lag()
        .await
        .unwrap();
    assert_eq!((lag.checkpoint, lag.behind), (log[2].position, 0));
}

/// Generates one `#[tokio::test]` per SQL consumer conformance case; `$make` is an async
/// expression yielding a fresh store that is both a [`SqlStore`] and an [`InboxStore`],
/// evaluated once per case.
#[macro_export]
macro_rules! sql_consumer_conformance_tests {
    ($make:expr) => {
        $crate::sql_consumer_conformance_tests!(@cases $make;
            a_consumers_writes_and_its_inbox_commit_together,
            a_relay_keeps_its_checkpoint_and_lock_in_the_store);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::consumer::$case(store).await;
            }
        )*
    };
}
