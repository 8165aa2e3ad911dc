//! `EsNats::relay` and `EsNats::consumer`: es-core's loops on one connection in one call each,
//! moving events from one service's store to another's read model.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ledger::{self, Ledger, LedgerEvent, assert_exactly_once_in_order};
use es_core::integration::Outcome;
use es_sqlite::SqliteStore;

#[tokio::test]
async fn a_relay_and_a_consumer_made_by_es_nats_move_every_event_once() {
    let nats = common::connect("conv").await;
    let dir = tempfile::tempdir().unwrap();
    let producer = SqliteStore::open(dir.path().join("producer.db"))
        .await
        .unwrap();
    let consumer_store = SqliteStore::open(dir.path().join("consumer.db"))
        .await
        .unwrap();
    for n in 0..12 {
        ledger::append(&producer, &format!("c-{}", n % 4), n).await;
    }
    let mut relay = nats.relay(producer, "conv").publish_only::<LedgerEvent>();
    assert_eq!(relay.publish_pending().await.unwrap().published, 12);
    assert_eq!(relay.lag().await.unwrap().behind, 0);

    let ledger = Ledger::new("conv ledger.v1", "ledger");
    ledger.create_table(&consumer_store).await;
    let mut consumer = nats
        .consumer(consumer_store.clone(), ledger.clone())
        .await
        .unwrap();
    assert_eq!(consumer.pending().await.unwrap(), 12);
    let mut handled = 0;
    while let Some(outcome) = consumer.process_next(Duration::from_secs(2)).await.unwrap() {
        assert!(matches!(outcome, Outcome::Handled), "{outcome:?}");
        handled += 1;
    }
    assert_eq!(handled, 12);
    let expected: BTreeMap<String, i64> = (0..4).map(|stream| (format!("c-{stream}"), 3)).collect();
    assert_exactly_once_in_order(&ledger.rows(&consumer_store).await, &expected);

    // The durable consumer is named after the projection.
    let stream = nats
        .jetstream()
        .get_stream(&nats.stream_settings().name)
        .await
        .unwrap();
    let info = stream
        .consumer_info(es_nats::durable_name("conv ledger.v1"))
        .await
        .unwrap();
    assert_eq!(info.num_pending, 0);
}
