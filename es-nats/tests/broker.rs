//! The broker interface on a real NATS server: publishing with deduplication by message id,
//! a durable pull consumer's deliveries, attempts, retries and lag, the dead-letter queue, and
//! the refusals that are errors and never panics.

mod common;

use std::time::Duration;

use chrono::Utc;
use es_core::integration::{
    BrokerError, DeadLetterQueue, DeadLetteredMessage, Delivery, Message, Publisher, Subscription,
    headers, subject,
};
use es_nats::{JetStreamPublisher, SubscriptionSettings};

fn message(prefix: &str, id: &str, n: u32) -> Message {
    Message {
        subject: subject(prefix, "order", "Placed"),
        headers: vec![
            (headers::MSG_ID.to_owned(), id.to_owned()),
            (headers::EVENT_ID.to_owned(), id.to_owned()),
            (headers::EVENT_TYPE.to_owned(), "Placed".to_owned()),
        ],
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

/// The same subject, payload and headers (NATS keeps no header order).
fn assert_same(left: &Message, right: &Message) {
    let sorted = |message: &Message| {
        let mut headers = message.headers.clone();
        headers.sort();
        (message.subject.clone(), headers, message.payload.clone())
    };
    assert_eq!(sorted(left), sorted(right));
}

#[tokio::test]
async fn published_messages_arrive_once_per_message_id_with_their_headers_and_payload() {
    let nats = common::connect("publish").await;
    let publisher = nats.publisher();
    let mut acks = Vec::new();
    for n in 0..10 {
        acks.push(
            publisher
                .publish(message(nats.prefix(), &format!("id-{n}"), n))
                .await
                .unwrap(),
        );
    }
    // The same ids again: JetStream drops them within the duplicate window.
    for n in 0..10 {
        acks.push(
            publisher
                .publish(message(nats.prefix(), &format!("id-{n}"), n))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let mut subscription = nats.subscribe("reader").await.unwrap();
    assert_eq!(subscription.pending().await.unwrap(), 10);
    for n in 0..10 {
        let delivery = subscription
            .next(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a delivery");
        assert_same(
            delivery.message(),
            &message(nats.prefix(), &format!("id-{n}"), n),
        );
        assert_eq!(delivery.attempt(), 1);
        delivery.ack().await.unwrap();
    }
    assert!(
        subscription
            .next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while subscription.pending().await.unwrap() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledgements did not land"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_retried_message_comes_back_after_its_delay_with_the_next_attempt() {
    let nats = common::connect("retry").await;
    nats.publisher()
        .publish(message(nats.prefix(), "r-1", 1))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut subscription = nats.subscribe("retrier").await.unwrap();
    let first = subscription
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.attempt(), 1);
    let started = std::time::Instant::now();
    first.retry_after(Duration::from_millis(400)).await.unwrap();
    let second = subscription
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.message().header(headers::EVENT_ID), Some("r-1"));
    second.ack().await.unwrap();
}

#[tokio::test]
async fn an_unacknowledged_delivery_comes_back_to_a_new_subscription_after_ack_wait() {
    let nats = common::connect("ackwait").await;
    nats.publisher()
        .publish(message(nats.prefix(), "w-1", 1))
        .await
        .unwrap()
        .await
        .unwrap();
    let settings = SubscriptionSettings::new(nats.stream_settings().name.clone(), "dies")
        .ack_wait(Duration::from_secs(1));
    let mut dying = nats.subscribe_with(settings.clone()).await.unwrap();
    let held = dying.next(Duration::from_secs(5)).await.unwrap().unwrap();
    drop(held);
    drop(dying);
    let mut again = nats.subscribe_with(settings).await.unwrap();
    assert_eq!(again.pending().await.unwrap(), 1);
    let delivery = again.next(Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(delivery.attempt(), 2);
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn refusals_are_errors_not_panics() {
    let nats = common::connect("refusals").await;
    let publisher = nats.publisher();
    // No stream stores this subject.
    let stray = Message {
        subject: format!("{}-nostream.x.y", nats.prefix()),
        headers: vec![],
        payload: b"{}".to_vec(),
    };
    let error = publisher.publish(stray).await.unwrap().await.unwrap_err();
    assert!(matches!(error, BrokerError::Rejected { .. }), "{error}");
    assert!(error.to_string().contains("no jetstream stream"), "{error}");
    // A wildcard subject, a header name with a colon, a value with a line break.
    let mut bad = message(nats.prefix(), "b", 1);
    bad.subject = format!("{}.*.x", nats.prefix());
    assert!(!publisher.publish(bad).await.unwrap_err().is_transient());
    let mut bad = message(nats.prefix(), "b", 1);
    bad.headers.push(("a:b".to_owned(), "v".to_owned()));
    assert!(!publisher.publish(bad).await.unwrap_err().is_transient());
    let mut bad = message(nats.prefix(), "b", 1);
    bad.headers.push(("X".to_owned(), "a\nb".to_owned()));
    assert!(!publisher.publish(bad).await.unwrap_err().is_transient());
    // A publisher on a plain context works the same.
    let plain = JetStreamPublisher::new(async_nats::jetstream::new(nats.client().clone()));
    plain
        .publish(message(nats.prefix(), "p", 1))
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_per_consumer_oldest_first_and_redriven_with_a_new_message_id() {
    let nats = common::connect("dlq").await;
    let queue = nats.dead_letters().await.unwrap();
    let original = message(nats.prefix(), "ev-1", 7);
    let letter = |consumer: &str, error: &str, original: &Message| DeadLetteredMessage {
        id: String::new(),
        consumer: consumer.to_owned(),
        message: original.clone(),
        error: error.to_owned(),
        attempts: 5,
        failed_at: Utc::now(),
    };
    let first = letter("summary", "handler failed:\nno such order", &original);
    queue.send(&first).await.unwrap();
    let other = message(nats.prefix(), "ev-2", 8);
    queue
        .send(&letter("summary", "second", &other))
        .await
        .unwrap();
    queue
        .send(&letter("billing", "elsewhere", &other))
        .await
        .unwrap();

    let listed = queue.list("summary").await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0].message, original);
    assert_eq!(listed[0].error, "handler failed: no such order");
    assert_eq!(listed[0].attempts, 5);
    assert_eq!(listed[0].consumer, "summary");
    assert_eq!(listed[0].failed_at, first.failed_at);
    assert_eq!(listed[1].message, other);
    assert_eq!(queue.list("billing").await.unwrap().len(), 1);
    assert!(queue.list("nobody").await.unwrap().is_empty());

    // The original was consumed already (its id is in the duplicate window): the redrive still
    // reaches the consumer, as a new message keeping its event id.
    nats.publisher()
        .publish(original.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut subscription = nats.subscribe("summary").await.unwrap();
    subscription
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .ack()
        .await
        .unwrap();

    assert!(queue.redrive(&listed[0].id).await.unwrap());
    assert!(
        !queue.redrive(&listed[0].id).await.unwrap(),
        "a letter is redriven once"
    );
    assert!(!queue.redrive("not-a-sequence").await.unwrap());
    let redriven = subscription
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(redriven.message().subject, original.subject);
    assert_eq!(redriven.message().payload, original.payload);
    assert_eq!(redriven.message().header(headers::EVENT_ID), Some("ev-1"));
    assert_eq!(
        redriven.message().header(headers::MSG_ID),
        Some(format!("ev-1.redrive.{}", listed[0].id).as_str())
    );
    redriven.ack().await.unwrap();
    let left = queue.list("summary").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message, other);
}

#[tokio::test]
async fn names_nats_cannot_serve_are_refused_before_they_reach_the_server() {
    let nats = common::connect("names").await;
    for bad in ["", "a.b", "a b", "a%2Eb", "a*", "a>", "café"] {
        let settings = SubscriptionSettings::new(nats.stream_settings().name.clone(), bad);
        let error = nats.subscribe_with(settings).await.unwrap_err();
        assert!(
            matches!(error, es_nats::NatsError::Invalid { .. }),
            "{bad:?}: {error}"
        );
        let settings = es_nats::StreamSettings::new(bad, vec![format!("{}.x", nats.prefix())]);
        assert!(
            es_nats::ensure_stream(nats.jetstream(), &settings)
                .await
                .is_err(),
            "{bad:?}"
        );
    }
    let settings = es_nats::StreamSettings::new("OK", vec!["a.*.>".to_owned(), "b..c".to_owned()]);
    let error = es_nats::ensure_stream(nats.jetstream(), &settings)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("`b..c`"), "{error}");
}
