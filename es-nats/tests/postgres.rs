//! The whole way on PostgreSQL: a relay reads a PostgreSQL store's log and publishes to NATS,
//! a consumer handles the events into a read model in another PostgreSQL schema through the
//! inbox, with an acknowledgement lost (the event comes again and changes nothing) and a
//! poison message (dead-lettered, re-driven once fixed). Each store is a fresh schema.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ledger::{self, Ledger};
use es_core::integration::{
    Consumer, DeadLetterQueue, MemoryBus, Outcome, Publisher, Relay, headers,
};
use es_core::projection::RetryPolicy;
use es_nats::SubscriptionSettings;

#[tokio::test]
async fn a_postgres_log_reaches_a_postgres_read_model_exactly_once() {
    let nats = common::connect("pg").await;
    let producer = es_postgres::testing::store().await;
    let consumer_store = es_postgres::testing::store().await;
    let ledger = Ledger::new(
        "pg-ledger",
        &format!("\"{}\".ledger", consumer_store.schema()),
    );
    ledger.create_table(&consumer_store).await;
    for n in 0..30 {
        ledger::append(&producer, &format!("g-{}", n % 3), n).await;
    }
    let mut relay = Relay::new(producer, nats.publisher(), "pg").subject_prefix(nats.prefix());
    assert_eq!(relay.publish_pending().await.unwrap().published, 30);
    assert_eq!(relay.lag().await.unwrap().behind, 0);

    ledger.set_poison(7, true);
    let dead_letters = nats.dead_letters().await.unwrap();
    let settings = SubscriptionSettings::new(nats.stream_settings().name.clone(), "pg-ledger")
        .ack_wait(Duration::from_secs(1));
    let mut consumer = Consumer::new(
        consumer_store.clone(),
        ledger.clone(),
        nats.subscribe_with(settings).await.unwrap(),
        dead_letters.clone(),
    )
    .retry(RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
    });
    let mut dead = 0;
    while let Some(outcome) = consumer.process_next(Duration::from_secs(2)).await.unwrap() {
        if let Outcome::DeadLettered { .. } = outcome {
            dead += 1;
        }
    }
    assert_eq!(dead, 1);
    assert_eq!(ledger.count(&consumer_store).await, 29);

    ledger.set_poison(7, false);
    let letters = dead_letters.list("pg-ledger").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(dead_letters.redrive(&letters[0].id).await.unwrap());
    let outcome = consumer.process_next(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert!(!dead_letters.redrive(&letters[0].id).await.unwrap());

    // Every event published again under new message ids (a relay that crashed before its
    // checkpoint, after the duplicate window): the inbox drops every one.
    let bus = MemoryBus::new();
    Relay::new(relay.store().clone(), bus.clone(), "pg-again")
        .subject_prefix(nats.prefix())
        .publish_pending()
        .await
        .unwrap();
    let publisher = nats.publisher();
    for mut message in bus.published() {
        for (name, value) in &mut message.headers {
            if name == headers::MSG_ID {
                value.push_str(".again");
            }
        }
        publisher.publish(message).await.unwrap().await.unwrap();
    }
    let mut duplicates = 0;
    while let Some(outcome) = consumer.process_next(Duration::from_secs(2)).await.unwrap() {
        assert!(matches!(outcome, Outcome::Duplicate), "{outcome:?}");
        duplicates += 1;
    }
    assert_eq!(duplicates, 30);

    // Exactly once; per stream in log order, the poisoned entry last.
    let rows = ledger.rows(&consumer_store).await;
    assert_eq!(rows.len(), 30);
    assert_eq!(
        rows.last().map(|row| (row.stream_id.as_str(), row.n)),
        Some(("g-1", 7))
    );
    let mut per_stream: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in &rows[..29] {
        per_stream
            .entry(row.stream_id.as_str())
            .or_default()
            .push(row.n);
    }
    for stream in 0..3 {
        let wanted: Vec<i64> = (0..30).filter(|n| n % 3 == stream && *n != 7).collect();
        assert_eq!(per_stream[format!("g-{stream}").as_str()], wanted);
    }
}
