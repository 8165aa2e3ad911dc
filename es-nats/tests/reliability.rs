//! Reliability on a real NATS server: the relay killed with SIGKILL while writers append, the
//! server restarted during a run, a consumer dying mid-batch, two relays of one name. In each,
//! the consumer's read model (a SQLite file) ends with every event exactly once, in per-stream
//! order.
//!
//! The relay of the SIGKILL test runs in a separate process: this test binary itself, started
//! again to run only [`relay_child_process`] with the settings in its environment.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::ledger::{self, Ledger, assert_exactly_once_in_order};
use es_core::integration::{
    Consumer, DeadLetterQueue, Delivery, Outcome, Relay, RelayError, Subscription,
};
use es_core::projection::RetryPolicy;
use es_nats::{EsNats, JetStreamSubscription, Storage, StreamSettings, SubscriptionSettings};
use es_sqlite::{SqliteOptions, SqliteStore};
use tokio::sync::oneshot;

/// The SQLite options every process of a test uses: a short relay lease, so that the relay
/// after a killed one takes over quickly.
fn sqlite_options() -> SqliteOptions {
    SqliteOptions::default().lock_lease(Duration::from_millis(500))
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open_with(path, sqlite_options())
        .await
        .unwrap_or_else(|error| panic!("opening {} failed: {error}", path.display()))
}

async fn connect_to(url: &str, prefix: &str, storage: Storage) -> EsNats {
    EsNats::connect_with(
        url,
        prefix,
        StreamSettings::for_prefix(prefix).storage(storage),
    )
    .await
    .unwrap_or_else(|error| panic!("connecting to {url} failed (start `nats-server -js`): {error}"))
}

/// A consumer of `nats`'s stream writing to the ledger in `store`, running in a task until the
/// returned sender is dropped or fired.
async fn spawn_consumer(
    nats: &EsNats,
    store: SqliteStore,
    ledger: Ledger,
    durable: &str,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let subscription = nats
        .subscribe_with(
            SubscriptionSettings::new(nats.stream_settings().name.clone(), durable)
                .ack_wait(Duration::from_secs(2)),
        )
        .await
        .expect("the subscription opens");
    let dead_letters = nats
        .dead_letters()
        .await
        .expect("the dead-letter queue opens");
    let mut consumer = Consumer::new(store, ledger, subscription, dead_letters)
        .poll_timeout(Duration::from_millis(200));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        consumer
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("the consumer runs until stopped");
    });
    (stop, task)
}

/// Waits until the ledger holds `total` rows (at most `limit`), then a little longer so that a
/// duplicate would show.
async fn wait_for_rows(store: &SqliteStore, ledger: &Ledger, total: usize, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let count = ledger.count(store).await;
        if count >= total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the consumer handled {count} of {total} events in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The relay of [`relay_killed_with_sigkill_at_random_moments_loses_and_duplicates_nothing`], in a
/// process of its own: this binary started again with `--ignored --exact relay_child_process`
/// and the settings in `ES_NATS_RELAY_*`. It relays until killed, waiting for the lease of a
/// killed predecessor to run out.
#[tokio::test]
#[ignore = "a helper process of the SIGKILL test, started by it"]
async fn relay_child_process() {
    let (Ok(db), Ok(url), Ok(prefix)) = (
        std::env::var("ES_NATS_RELAY_DB"),
        std::env::var("ES_NATS_RELAY_URL"),
        std::env::var("ES_NATS_RELAY_PREFIX"),
    ) else {
        panic!("relay_child_process is started by the SIGKILL test, with ES_NATS_RELAY_* set");
    };
    // The test holds this process's standard input: when it ends (the test finished or died),
    // so does the relay.
    std::thread::spawn(|| {
        let mut byte = [0u8; 1];
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut byte);
        std::process::exit(0);
    });
    let store = open(Path::new(&db)).await;
    let nats = connect_to(&url, &prefix, Storage::Memory).await;
    let mut relay = Relay::new(store, nats.publisher(), "sigkill")
        .subject_prefix(prefix.as_str())
        .batch_size(25)
        .idle_timeout(Duration::from_millis(200));
    // As a supervisor would: wait while a killed predecessor's lease runs, start again after
    // losing the lock (a heartbeat late under load).
    loop {
        match relay.run(std::future::pending()).await {
            Err(RelayError::AlreadyRunning { .. } | RelayError::LockLost { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the relay stopped: {other:?}"),
        }
    }
}

/// A relay process, killed (SIGKILL) when dropped, so that none outlives a failed test.
struct RelayProcess(Child);

impl RelayProcess {
    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL the relay"); // Child::kill sends SIGKILL on Unix.
        self.0.wait().expect("the killed relay is reaped");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_relay_child(db: &Path, url: &str, prefix: &str) -> RelayProcess {
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(exe)
        .args(["--ignored", "--exact", "relay_child_process", "--nocapture"])
        .env("ES_NATS_RELAY_DB", db)
        .env("ES_NATS_RELAY_URL", url)
        .env("ES_NATS_RELAY_PREFIX", prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the relay process starts");
    RelayProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_with_sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let producer_db = dir.path().join("producer.db");
    let producer = open(&producer_db).await;
    let consumer_store = open(&dir.path().join("consumer.db")).await;
    let nats = common::connect("sigkill").await;
    let ledger = Ledger::new("sigkill-ledger", "ledger");
    ledger.create_table(&consumer_store).await;
    let (stop_consumer, consumer) = spawn_consumer(
        &nats,
        consumer_store.clone(),
        ledger.clone(),
        "sigkill-ledger",
    )
    .await;

    // Writers append to six streams while the relay is killed again and again.
    const STREAMS: i64 = 6;
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writers = {
        let producer = producer.clone();
        let stop_writing = stop_writing.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop_writing.load(Ordering::Relaxed) {
                for stream in 0..STREAMS {
                    ledger::append(&producer, &format!("s-{stream}"), rounds).await;
                }
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(20..80))).await;
            }
            rounds
        })
    };
    let url = common::nats_url();
    let kills = fastrand::usize(6..9);
    for _ in 0..kills {
        let mut relay = spawn_relay_child(&producer_db, &url, nats.prefix());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1_200))).await;
        assert!(
            !writers.is_finished(),
            "the writers append while the relay is killed"
        );
        relay.kill();
    }
    stop_writing.store(true, Ordering::Relaxed);
    let per_stream = writers.await.unwrap();
    assert!(per_stream > 20, "{per_stream} rounds of appends");

    let before_last = ledger.count(&consumer_store).await;
    assert!(before_last > 0, "the killed relays published some events");

    // The last relay runs to the end.
    let mut relay = spawn_relay_child(&producer_db, &url, nats.prefix());
    let total = (STREAMS * per_stream) as usize;
    wait_for_rows(&consumer_store, &ledger, total, Duration::from_secs(60)).await;
    relay.kill();
    let _ = stop_consumer.send(());
    consumer.await.unwrap();

    let expected: BTreeMap<String, i64> = (0..STREAMS)
        .map(|stream| (format!("s-{stream}"), per_stream))
        .collect();
    assert_exactly_once_in_order(&ledger.rows(&consumer_store).await, &expected);
    let dead = nats.dead_letters().await.unwrap();
    assert!(dead.list("sigkill-ledger").await.unwrap().is_empty());
    // Whatever the killed relays published again, JetStream's duplicate window dropped.
    assert_eq!(stream_messages(&nats).await, total as u64);
}

/// How many messages the events stream holds.
async fn stream_messages(nats: &EsNats) -> u64 {
    let mut stream = nats
        .jetstream()
        .get_stream(&nats.stream_settings().name)
        .await
        .expect("the events stream exists");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restarted_during_a_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::OwnServer::start(&dir.path().join("nats"));
    let prefix = common::unique_prefix("restart");
    let nats = connect_to(&server.url(), &prefix, Storage::File).await;
    let producer = open(&dir.path().join("producer.db")).await;
    let consumer_store = open(&dir.path().join("consumer.db")).await;
    let ledger = Ledger::new("restart-ledger", "ledger");
    ledger.create_table(&consumer_store).await;

    let mut relay = Relay::new(producer.clone(), nats.publisher(), "restart")
        .subject_prefix(prefix.as_str())
        .batch_size(20)
        .idle_timeout(Duration::from_millis(200))
        .retry(RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        });
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = relay_stopped.await;
            })
            .await
    });
    let (stop_consumer, consumer) = spawn_consumer(
        &nats,
        consumer_store.clone(),
        ledger.clone(),
        "restart-ledger",
    )
    .await;

    const STREAMS: i64 = 4;
    const PER_STREAM: i64 = 50;
    for n in 0..PER_STREAM {
        for stream in 0..STREAMS {
            ledger::append(&producer, &format!("r-{stream}"), n).await;
        }
        if n == PER_STREAM / 3 || n == 2 * PER_STREAM / 3 {
            server.restart();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = (STREAMS * PER_STREAM) as usize;
    wait_for_rows(&consumer_store, &ledger, total, Duration::from_secs(90)).await;
    let _ = stop_relay.send(());
    relay_task
        .await
        .unwrap()
        .expect("the relay rode out the restarts");
    let _ = stop_consumer.send(());
    consumer.await.unwrap();

    let expected: BTreeMap<String, i64> = (0..STREAMS)
        .map(|stream| (format!("r-{stream}"), PER_STREAM))
        .collect();
    assert_exactly_once_in_order(&ledger.rows(&consumer_store).await, &expected);
}

/// A subscription whose deliveries drop one acknowledgement: as if the consumer died after its
/// transaction committed and before the broker heard of it.
struct LosesAckOf {
    inner: JetStreamSubscription,
    lose: u64,
    seen: u64,
}

struct MaybeAck {
    inner: es_nats::JetStreamDelivery,
    lose: bool,
}

impl Delivery for MaybeAck {
    fn message(&self) -> &es_core::integration::Message {
        self.inner.message()
    }
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
    async fn ack(self) -> Result<(), es_core::integration::BrokerError> {
        if self.lose {
            return Ok(());
        }
        self.inner.ack().await
    }
    async fn retry_after(self, delay: Duration) -> Result<(), es_core::integration::BrokerError> {
        self.inner.retry_after(delay).await
    }
}

impl Subscription for LosesAckOf {
    type Delivery = MaybeAck;
    async fn next(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<MaybeAck>, es_core::integration::BrokerError> {
        Ok(self.inner.next(timeout).await?.map(|inner| {
            self.seen += 1;
            MaybeAck {
                inner,
                lose: self.seen == self.lose,
            }
        }))
    }
    async fn pending(&mut self) -> Result<u64, es_core::integration::BrokerError> {
        self.inner.pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_dying_mid_batch_has_exactly_once_effects_through_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::connect("midbatch").await;
    let producer = open(&dir.path().join("producer.db")).await;
    let consumer_store = open(&dir.path().join("consumer.db")).await;
    let ledger = Ledger::new("midbatch-ledger", "ledger");
    ledger.create_table(&consumer_store).await;
    const STREAMS: i64 = 3;
    const PER_STREAM: i64 = 40;
    for n in 0..PER_STREAM {
        for stream in 0..STREAMS {
            ledger::append(&producer, &format!("m-{stream}"), n).await;
        }
    }
    let mut relay =
        Relay::new(producer, nats.publisher(), "midbatch").subject_prefix(nats.prefix());
    assert_eq!(
        relay.publish_pending().await.unwrap().published,
        (STREAMS * PER_STREAM) as u64
    );

    let settings =
        SubscriptionSettings::new(nats.stream_settings().name.clone(), "midbatch-ledger")
            .ack_wait(Duration::from_secs(1))
            .batch(50);
    let dead_letters = nats.dead_letters().await.unwrap();
    // The first consumer, on a connection of its own, handles 37 events, the 37th's
    // acknowledgement lost, and dies with a pulled batch in hand: its connection closes.
    {
        let own = connect_to(&common::nats_url(), nats.prefix(), Storage::Memory).await;
        let subscription = LosesAckOf {
            inner: own.subscribe_with(settings.clone()).await.unwrap(),
            lose: 37,
            seen: 0,
        };
        let mut consumer = Consumer::new(
            consumer_store.clone(),
            ledger.clone(),
            subscription,
            dead_letters.clone(),
        );
        for _ in 0..37 {
            let outcome = consumer.process_next(Duration::from_secs(5)).await.unwrap();
            assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
        }
    }
    assert_eq!(ledger.count(&consumer_store).await, 37);

    // The next one gets the 37th again (its inbox says handled) and everything after it.
    let subscription = nats.subscribe_with(settings).await.unwrap();
    let mut consumer = Consumer::new(
        consumer_store.clone(),
        ledger.clone(),
        subscription,
        dead_letters,
    );
    let mut duplicates = 0;
    while let Some(outcome) = consumer.process_next(Duration::from_secs(4)).await.unwrap() {
        match outcome {
            Outcome::Handled => {}
            Outcome::Duplicate => duplicates += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // The event whose acknowledgement was lost came once more; so may the last ones the dying
    // connection had not flushed yet.
    assert!(
        (1..=37).contains(&duplicates),
        "{duplicates} events came again and changed nothing"
    );
    let expected: BTreeMap<String, i64> = (0..STREAMS)
        .map(|stream| (format!("m-{stream}"), PER_STREAM))
        .collect();
    assert_exactly_once_in_order(&ledger.rows(&consumer_store).await, &expected);
    assert_eq!(consumer.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn of_two_relays_of_one_name_only_one_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::connect("tworelays").await;
    let path = dir.path().join("producer.db");
    let producer = open(&path).await;
    for n in 0..50 {
        ledger::append(&producer, &format!("d-{}", n % 5), n).await;
    }
    let mut first = Relay::new(producer, nats.publisher(), "twin").subject_prefix(nats.prefix());
    let mut second =
        Relay::new(open(&path).await, nats.publisher(), "twin").subject_prefix(nats.prefix());
    let (stop_first, first_stopped) = oneshot::channel::<()>();
    let first_task = tokio::spawn(async move {
        let result = first
            .run(async move {
                let _ = first_stopped.await;
            })
            .await;
        (first, result)
    });
    let stream_messages = || async {
        let mut stream = nats
            .jetstream()
            .get_stream(&nats.stream_settings().name)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stream_messages().await < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first relay published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = second.publish_pending().await;
    assert!(
        matches!(refused, Err(RelayError::AlreadyRunning { .. })),
        "{refused:?}"
    );
    assert_eq!(stream_messages().await, 50);

    // Once the first stops, the second takes over from the shared checkpoint.
    let _ = stop_first.send(());
    let (_first, result) = first_task.await.unwrap();
    result.unwrap();
    let taken_over = second.publish_pending().await.unwrap();
    assert_eq!(taken_over.published, 0, "nothing left to publish");
    assert_eq!(stream_messages().await, 50);
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_its_attempts_and_redriven_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::connect("poison").await;
    let producer = open(&dir.path().join("producer.db")).await;
    let consumer_store = open(&dir.path().join("consumer.db")).await;
    let ledger = Ledger::new("poison-ledger", "ledger");
    ledger.create_table(&consumer_store).await;
    for n in 0..10 {
        ledger::append(&producer, "p-1", n).await;
    }
    Relay::new(producer, nats.publisher(), "poison")
        .subject_prefix(nats.prefix())
        .publish_pending()
        .await
        .unwrap();
    ledger.set_poison(3, true);
    let dead_letters = nats.dead_letters().await.unwrap();
    let subscription = nats.subscribe("poison-ledger").await.unwrap();
    let mut consumer = Consumer::new(
        consumer_store.clone(),
        ledger.clone(),
        subscription,
        dead_letters.clone(),
    )
    .retry(RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
    });
    let mut retries = 0;
    let mut dead = 0;
    while let Some(outcome) = consumer.process_next(Duration::from_secs(2)).await.unwrap() {
        match outcome {
            Outcome::Handled => {}
            Outcome::Retrying { error, .. } => {
                assert!(error.contains("entry 3 is poisoned"), "{error}");
                retries += 1;
            }
            Outcome::DeadLettered { reason } => {
                assert!(
                    reason.to_string().contains("entry 3 is poisoned"),
                    "{reason}"
                );
                dead += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((retries, dead), (2, 1));
    let numbers: Vec<i64> = ledger
        .rows(&consumer_store)
        .await
        .iter()
        .map(|row| row.n)
        .collect();
    assert_eq!(
        numbers,
        vec![0, 1, 2, 4, 5, 6, 7, 8, 9],
        "later messages were handled"
    );

    let letters = dead_letters.list("poison-ledger").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0]
            .error
            .contains("failed 3 deliveries: entry 3 is poisoned"),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[0].message.payload, br#"{"n":3}"#.to_vec());

    ledger.set_poison(3, false);
    assert!(dead_letters.redrive(&letters[0].id).await.unwrap());
    let outcome = consumer.process_next(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Handled)), "{outcome:?}");
    let numbers: Vec<i64> = ledger
        .rows(&consumer_store)
        .await
        .iter()
        .map(|row| row.n)
        .collect();
    assert_eq!(numbers, vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 3]);
    assert!(dead_letters.list("poison-ledger").await.unwrap().is_empty());
}
