//! Messages on the subject that are not events this consumer can handle: not JSON, an unknown
//! event type, a schema version newer than the consumer knows, missing or invalid headers, a
//! payload of the wrong shape. Each is dead-lettered at once with a clear error that does not
//! quote the payload, nothing panics, and the message after them is handled.

mod common;

use std::time::Duration;

use common::ledger::{self, Ledger};
use es_core::integration::{
    Consumer, DeadLetterQueue, MemoryBus, Message, Outcome, Publisher, Relay, headers,
};
use es_sqlite::SqliteStore;

/// A valid message of the ledger's domain, as the relay makes it, for stream `b-1`.
async fn valid_messages(prefix: &str, count: i64) -> Vec<Message> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("template.db"))
        .await
        .unwrap();
    for n in 0..count {
        ledger::append(&store, "b-1", n).await;
    }
    let bus = MemoryBus::new();
    Relay::new(store, bus.clone(), "template")
        .subject_prefix(prefix)
        .publish_pending()
        .await
        .unwrap();
    bus.published()
}

fn with_header(mut message: Message, name: &str, value: &str) -> Message {
    message.headers.retain(|(key, _)| key != name);
    message.headers.push((name.to_owned(), value.to_owned()));
    message
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_a_clear_error_and_later_messages_are_handled() {
    let nats = common::connect("bad").await;
    let mut messages = valid_messages(nats.prefix(), 2).await;
    let good = messages.pop().unwrap();
    let template = messages.pop().unwrap();
    let id = |n: u32| format!("bad-{n}");

    let not_json = Message {
        payload: b"not json { secret".to_vec(),
        ..with_header(template.clone(), headers::MSG_ID, &id(1))
    };
    let wrong_shape = Message {
        payload: br#"{"secret": "not an entry"}"#.to_vec(),
        ..with_header(template.clone(), headers::MSG_ID, &id(2))
    };
    let unknown_type = with_header(
        with_header(template.clone(), headers::MSG_ID, &id(3)),
        headers::EVENT_TYPE,
        "Exploded",
    );
    let newer_schema = with_header(
        with_header(template.clone(), headers::MSG_ID, &id(4)),
        headers::SCHEMA_VERSION,
        "99",
    );
    let bad_version = with_header(
        with_header(template.clone(), headers::MSG_ID, &id(5)),
        headers::STREAM_VERSION,
        "minus one",
    );
    let no_headers = Message {
        headers: Vec::new(),
        ..template.clone()
    };
    let bad = vec![
        ("not json", not_json),
        ("wrong shape", wrong_shape),
        ("unknown type", unknown_type),
        ("newer schema", newer_schema),
        ("invalid header", bad_version),
        ("no headers", no_headers),
    ];
    let publisher = nats.publisher();
    for (_, message) in &bad {
        publisher
            .publish(message.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publisher
        .publish(good.clone())
        .await
        .unwrap()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("consumer.db"))
        .await
        .unwrap();
    let ledger = Ledger::new("bad-ledger", "ledger");
    ledger.create_table(&store).await;
    let dead_letters = nats.dead_letters().await.unwrap();
    let mut consumer = Consumer::new(
        store.clone(),
        ledger.clone(),
        nats.subscribe("bad-ledger").await.unwrap(),
        dead_letters.clone(),
    );
    let mut reasons = Vec::new();
    for (what, _) in &bad {
        match consumer.process_next(Duration::from_secs(5)).await.unwrap() {
            Some(Outcome::DeadLettered { reason }) => reasons.push(reason.to_string()),
            other => panic!("{what}: expected a dead letter, got {other:?}"),
        }
    }
    let outcome = consumer.process_next(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    assert_eq!(
        ledger.rows(&store).await.len(),
        1,
        "the good message was handled"
    );
    assert!(
        consumer
            .process_next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );

    let letters = dead_letters.list("bad-ledger").await.unwrap();
    assert_eq!(letters.len(), bad.len());
    for ((what, message), letter) in bad.iter().zip(&letters) {
        assert_eq!(&letter.message.payload, &message.payload, "{what}");
        assert_eq!(letter.message.subject, message.subject, "{what}");
        assert_eq!(
            letter.attempts, 1,
            "{what}: dead-lettered at the first delivery"
        );
        assert!(!letter.error.is_empty(), "{what}");
        assert!(!letter.error.contains("secret"), "{what}: {}", letter.error);
    }
    let error_of = |what: &str| {
        let index = bad.iter().position(|(name, _)| *name == what).unwrap();
        letters[index].error.to_lowercase()
    };
    assert!(
        error_of("not json").contains("json"),
        "{}",
        error_of("not json")
    );
    assert!(
        error_of("unknown type").contains("exploded"),
        "{}",
        error_of("unknown type")
    );
    assert!(
        error_of("newer schema").contains("99"),
        "{}",
        error_of("newer schema")
    );
    assert!(
        error_of("invalid header").contains(&headers::STREAM_VERSION.to_lowercase()),
        "{}",
        error_of("invalid header")
    );
    assert!(
        error_of("no headers").contains("header"),
        "{}",
        error_of("no headers")
    );
    for (letter, reason) in letters.iter().zip(&reasons) {
        assert_eq!(&letter.error, reason);
    }
}
