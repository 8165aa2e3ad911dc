//! The inbox conformance suite: an [`InboxStore`] records each consumer's processed events in
//! the transaction it is given, so a consumer's effects and its inbox commit together.
//!
//! ```ignore
//! es_core::inbox_conformance_tests!(async { my_store().await });
//! ```

use uuid::Uuid;

use crate::integration::InboxStore;
use crate::store::StoreError;
use crate::stream::LogScope;

/// Records `event_id` for `consumer` in a transaction of its own, retrying while the store is
/// unavailable (a racing transaction may make it so); whether it was new.
async fn record_committed<S: InboxStore>(store: &S, consumer: &str, event_id: Uuid) -> bool {
    for _ in 0..50 {
        let attempt = async {
            let mut transaction = store.begin(LogScope::AllTenants).await?;
            let new = store
                .record_processed(&mut transaction, consumer, event_id)
                .await?;
            store.commit(transaction).await?;
            Ok::<bool, StoreError>(new)
        };
        match attempt.await {
            Ok(new) => return new,
            Err(error) if error.is_transient() => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => panic!("recording a processed event failed: {error}"),
        }
    }
    panic!("recording a processed event stayed unavailable")
}

/// An event is new once: again in the same transaction, and in any later one once committed.
pub async fn an_event_is_new_once<S: InboxStore>(store: S) {
    let id = Uuid::new_v4();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        store
            .record_processed(&mut transaction, "billing", id)
            .await
            .unwrap(),
        "a new event"
    );
    assert!(
        !store
            .record_processed(&mut transaction, "billing", id)
            .await
            .unwrap(),
        "the same event again in the same transaction"
    );
    store.commit(transaction).await.unwrap();
    assert!(
        !record_committed(&store, "billing", id).await,
        "the same event in a later transaction"
    );
    assert!(
        record_committed(&store, "billing", Uuid::new_v4()).await,
        "another event"
    );
}

/// A transaction rolled back (dropped) records nothing.
pub async fn a_rolled_back_record_is_forgotten<S: InboxStore>(store: S) {
    let id = Uuid::new_v4();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        store
            .record_processed(&mut transaction, "billing", id)
            .await
            .unwrap()
    );
    drop(transaction);
    assert!(
        record_committed(&store, "billing", id).await,
        "the rolled back record is gone"
    );
}

/// Each consumer has an inbox of its own, and the inbox is not tenant-scoped: an event recorded
/// in a transaction scoped to one tenant is known in a transaction scoped to another.
pub async fn inboxes_are_per_consumer_and_across_tenants<S: InboxStore>(store: S) {
    let id = Uuid::new_v4();
    let mut transaction = store.begin(LogScope::Tenant("acme")).await.unwrap();
    assert!(
        store
            .record_processed(&mut transaction, "billing", id)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_processed(&mut transaction, "shipping", id)
            .await
            .unwrap(),
        "another consumer"
    );
    store.commit(transaction).await.unwrap();
    let mut transaction = store.begin(LogScope::Tenant("globex")).await.unwrap();
    assert!(
        !store
            .record_processed(&mut transaction, "billing", id)
            .await
            .unwrap(),
        "known in a transaction of another tenant"
    );
    assert!(
        store
            .record_processed(&mut transaction, "audit", id)
            .await
            .unwrap()
    );
}

/// Of transactions racing to record one event, exactly one commits it as new.
pub async fn racing_transactions_record_an_event_once<S: InboxStore>(store: S) {
    let id = Uuid::new_v4();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { record_committed(&store, "billing", id).await })
        })
        .collect();
    let mut new = 0;
    for racer in racers {
        if racer.await.expect("a racer finished") {
            new += 1;
        }
    }
    assert_eq!(new, 1, "exactly one transaction recorded the event as new");
}

/// Generates one `#[tokio::test]` per inbox conformance case; `$make` is an async expression
/// that yields a fresh store and is evaluated once per case.
#[macro_export]
macro_rules! inbox_conformance_tests {
    ($make:expr) => {
        $crate::inbox_conformance_tests!(@cases $make;
            an_event_is_new_once, a_rolled_back_record_is_forgotten,
            inboxes_are_per_consumer_and_across_tenants,
            racing_transactions_record_an_event_once);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::inbox::$case(store).await;
            }
        )*
    };
}
