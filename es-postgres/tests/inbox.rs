//! What the SQL consumer conformance suite cannot say of every store: on PostgreSQL, two
//! transactions recording the same event wait for each other rather than both winning. (A
//! consumer's writes and its inbox committing together, redeliveries, and relays on PostgreSQL
//! are in `conformance.rs`.)

use std::time::Duration;

use es_core::LogScope;
use es_core::integration::InboxStore;
use es_core::projection::ProjectionStore;
use es_core::sql::SqlStore;
use es_postgres::{PgStore, testing};
use uuid::Uuid;

async fn fresh_store() -> PgStore {
    testing::store().await
}

async fn inbox(store: &PgStore) -> i64 {
    let rows = store
        .query(
            &format!("SELECT count(*) AS n FROM \"{}\".inbox", store.schema()),
            &[],
        )
        .await
        .unwrap();
    rows[0]["n"].as_i64().unwrap()
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
