//! What the SQL consumer conformance suite cannot say of every store: the inbox is the file's
//! `es_inbox` table, and it outlives the process that wrote it. (A consumer's writes and its
//! inbox committing together, redeliveries, and relays on SQLite are in `conformance.rs`.)

use es_core::LogScope;
use es_core::integration::InboxStore;
use es_core::projection::ProjectionStore;
use es_core::sql::SqlStore;
use es_sqlite::SqliteStore;
use uuid::Uuid;

#[tokio::test]
async fn the_inbox_is_a_table_of_the_file_and_survives_reopening_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consumer.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let id = Uuid::new_v4();
    let mut transaction = store.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        store
            .record_processed(&mut transaction, "credits", id)
            .await
            .unwrap()
    );
    store.commit(transaction).await.unwrap();
    let rows = store
        .query("SELECT consumer, event_id FROM es_inbox", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["consumer"].as_str(), rows[0]["event_id"].as_str()),
        (Some("credits"), Some(id.to_string().as_str()))
    );
    store.close().await;

    // A consumer of a new process sees the event processed.
    let reopened = SqliteStore::open(&path).await.unwrap();
    let mut transaction = reopened.begin(LogScope::AllTenants).await.unwrap();
    assert!(
        !reopened
            .record_processed(&mut transaction, "credits", id)
            .await
            .unwrap()
    );
    assert!(
        reopened
            .record_processed(&mut transaction, "another-consumer", id)
            .await
            .unwrap()
    );
}
