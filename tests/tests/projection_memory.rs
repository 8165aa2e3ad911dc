//! Projections on `MemoryStore`: catch-up, checkpoints, skipping, failure policy, parked-event
//! retry, rebuild with progress, the single-runner lock and live tailing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::projection::{
    HandlerError, OnFailure, Projection, ProjectionError, ProjectionRunner, RetryPolicy,
};
use es_core::{
    EventStore, ExpectedVersion, MemoryStore, MemoryTransaction, NewEvent, Position, RawJson,
    RecordedEvent,
};
use es_examples::bank::{AccountEvent, Deposited, Opened};

/// Balance per account; fails on deposits of exactly `poison` while `poison` is set.
#[derive(Clone, Default)]
struct Balances {
    balances: Arc<Mutex<BTreeMap<String, i64>>>,
    handled: Arc<Mutex<u64>>,
    poison: Arc<Mutex<Option<i64>>>,
}

impl Balances {
    fn snapshot(&self) -> BTreeMap<String, i64> {
        self.balances.lock().unwrap().clone()
    }
    fn handled(&self) -> u64 {
        *self.handled.lock().unwrap()
    }
}

impl Projection<MemoryStore> for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn handle(
        &mut self,
        _: &mut MemoryTransaction,
        event: &AccountEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        *self.handled.lock().unwrap() += 1;
        let mut balances = self.balances.lock().unwrap();
        match event {
            AccountEvent::Opened(_) => {
                balances.insert(envelope.stream_id.clone(), 0);
            }
            AccountEvent::Deposited(Deposited { amount }) => {
                if *self.poison.lock().unwrap() == Some(*amount) {
                    return Err(format!("cannot handle a deposit of {amount}").into());
                }
                *balances.entry(envelope.stream_id.clone()).or_default() += amount;
            }
            AccountEvent::Withdrawn(w) => {
                *balances.entry(envelope.stream_id.clone()).or_default() -= w.amount
            }
            AccountEvent::Closed => {
                balances.remove(&envelope.stream_id);
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut MemoryTransaction) -> Result<(), HandlerError> {
        self.balances.lock().unwrap().clear();
        Ok(())
    }
}

fn raw(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: RawJson::from(payload),
        metadata: RawJson::empty_object(),
    }
}

async fn open(store: &MemoryStore, account: &str) {
    let event = raw(
        "Opened",
        serde_json::to_value(Opened { owner: "o".into() }).unwrap(),
    );
    store
        .append("account", account, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
}

async fn deposit(store: &MemoryStore, account: &str, amount: i64) {
    let event = raw("Deposited", serde_json::json!({ "amount": amount }));
    store
        .append(
            "account",
            account,
            ExpectedVersion::StreamExists,
            vec![event],
        )
        .await
        .unwrap();
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn catch_up_builds_the_read_model_and_skips_other_event_types_undecoded() {
    let store = MemoryStore::new();
    open(&store, "a").await;
    deposit(&store, "a", 10).await;
    // Not an account event, and not even JSON the projection could decode: skipped by name.
    store
        .append(
            "order",
            "o-1",
            ExpectedVersion::Any,
            vec![raw("OrderShipped", serde_json::json!([1, 2]))],
        )
        .await
        .unwrap();
    open(&store, "b").await;
    deposit(&store, "b", 5).await;
    deposit(&store, "a", 1).await;

    let balances = Balances::default();
    let mut runner = ProjectionRunner::new(store.clone(), balances.clone()).batch_size(2);
    let checkpoint = runner.catch_up().await.unwrap();
    assert_eq!(
        balances.snapshot(),
        BTreeMap::from([("a".into(), 11), ("b".into(), 5)])
    );
    assert_eq!(balances.handled(), 5);
    let log = store.read_all(Position::START, 100).await.unwrap();
    assert_eq!(checkpoint, log.last().unwrap().position);

    // A new runner continues from the stored checkpoint: nothing is handled twice.
    deposit(&store, "b", 7).await;
    let mut again = ProjectionRunner::new(store.clone(), balances.clone());
    again.catch_up().await.unwrap();
    assert_eq!(balances.handled(), 6);
    assert_eq!(balances.snapshot()["b"], 12);
}

#[tokio::test]
async fn a_poison_event_is_parked_after_its_attempts_and_retried_once_fixed() {
    let store = MemoryStore::new();
    open(&store, "a").await;
    deposit(&store, "a", 1).await;
    deposit(&store, "a", 666).await;
    deposit(&store, "a", 2).await;
    let balances = Balances::default();
    *balances.poison.lock().unwrap() = Some(666);
    let mut runner = ProjectionRunner::new(store.clone(), balances.clone())
        .retry(fast_retries(3))
        .on_failure(OnFailure::Park);
    runner.catch_up().await.unwrap();
    assert_eq!(
        balances.snapshot()["a"],
        3,
        "events after the poison one were processed"
    );
    // 3 handled in the failed batch (the poison's 1st attempt), then one at a time: the two
    // before it redone, the poison's attempts 2 and 3, the one after it.
    assert_eq!(
        balances.handled(),
        3 + 2 + 2 + 1,
        "the poison event is tried 3 times in all"
    );
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    assert_eq!(
        (
            letter.stream_id.as_str(),
            letter.stream_version,
            letter.attempts
        ),
        ("a", 3, 3)
    );
    assert_eq!(letter.event_type, "Deposited");
    assert!(
        letter.error.contains("cannot handle a deposit of 666"),
        "{}",
        letter.error
    );

    // Still broken: the retry fails and the event stays parked with one more attempt.
    assert!(!runner.retry_parked(letter.position).await.unwrap());
    assert_eq!(runner.parked().await.unwrap()[0].attempts, 4);

    *balances.poison.lock().unwrap() = None;
    assert!(runner.retry_parked(letter.position).await.unwrap());
    assert!(runner.parked().await.unwrap().is_empty());
    assert_eq!(balances.snapshot()["a"], 669);
    assert!(matches!(
        runner.retry_parked(letter.position).await,
        Err(ProjectionError::NotParked { .. })
    ));
}

#[tokio::test]
async fn the_stop_policy_stops_before_the_failing_event() {
    let store = MemoryStore::new();
    open(&store, "a").await;
    deposit(&store, "a", 1).await;
    deposit(&store, "a", 666).await;
    deposit(&store, "a", 2).await;
    let balances = Balances::default();
    *balances.poison.lock().unwrap() = Some(666);
    let mut runner = ProjectionRunner::new(store.clone(), balances.clone())
        .batch_size(10)
        .retry(fast_retries(2))
        .on_failure(OnFailure::Stop);
    let error = runner.catch_up().await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            &error,
            ProjectionError::Handler {
                stream_version: 3,
                attempts: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        message.contains("stream `a` version 3") && message.contains("deposit of 666"),
        "{message}"
    );
    assert_eq!(
        balances.snapshot()["a"],
        1,
        "the event before the poison one was committed"
    );

    // Fixed handler: the runner resumes at the failed event, nothing skipped.
    *balances.poison.lock().unwrap() = None;
    runner.catch_up().await.unwrap();
    assert_eq!(balances.snapshot()["a"], 669);
}

#[tokio::test]
async fn rebuild_replays_from_zero_and_reports_progress() {
    let store = MemoryStore::new();
    for i in 0..50 {
        let account = format!("acc-{i}");
        open(&store, &account).await;
        deposit(&store, &account, i).await;
    }
    let balances = Balances::default();
    let mut runner = ProjectionRunner::new(store.clone(), balances.clone()).batch_size(7);
    runner.catch_up().await.unwrap();
    balances.balances.lock().unwrap().insert("stale".into(), -1);
    let mut reports = Vec::new();
    runner
        .rebuild(|progress| reports.push(progress))
        .await
        .unwrap();
    assert!(
        !balances.snapshot().contains_key("stale"),
        "reset cleared the read model"
    );
    assert_eq!(balances.snapshot().len(), 50);
    assert_eq!(balances.handled(), 200);
    let last = reports.last().unwrap();
    assert_eq!((last.done, last.total), (100, 100));
    assert!(reports.windows(2).all(|w| w[0].done <= w[1].done));
    assert!(reports.iter().all(|p| p.done <= p.total));
    assert!(
        last.to_string().starts_with("100/100 events (100%), "),
        "{last}"
    );

    // The ready-made terminal bar drives the same callback (hidden when stderr is no terminal).
    runner
        .rebuild(es_core::projection::progress_bar("balances"))
        .await
        .unwrap();
    assert_eq!(balances.snapshot().len(), 50);
}

#[tokio::test]
async fn a_second_runner_of_the_same_projection_is_refused_while_the_first_runs() {
    let store = MemoryStore::new();
    open(&store, "a").await;
    let first = Balances::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut runner =
        ProjectionRunner::new(store.clone(), first.clone()).idle_timeout(Duration::from_millis(50));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });
    tokio::time::timeout(Duration::from_secs(5), async {
        while first.handled() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first runner processes");
    let second = Balances::default();
    let refused = ProjectionRunner::new(store.clone(), second.clone())
        .catch_up()
        .await;
    assert!(
        matches!(refused, Err(ProjectionError::AlreadyRunning { .. })),
        "{refused:?}"
    );
    assert_eq!(second.handled(), 0);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    // Released on stop.
    ProjectionRunner::new(store.clone(), second.clone())
        .catch_up()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tailing_wakes_on_appends_and_stops_gracefully() {
    let store = MemoryStore::new();
    let balances = Balances::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A long idle timeout: only the append notification can wake the runner in time.
    let mut runner = ProjectionRunner::new(store.clone(), balances.clone())
        .idle_timeout(Duration::from_secs(60));
    let running =
        tokio::spawn(async move { runner.run(async { stopped.await.unwrap_or(()) }).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    open(&store, "a").await;
    for n in 1..=20 {
        deposit(&store, "a", n).await;
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while balances.snapshot().get("a") != Some(&210) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the tailing runner caught up");
    stop.send(()).unwrap();
    let checkpoint = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
    assert_eq!(
        checkpoint,
        store
            .read_all(Position::START, 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .position
    );
}
