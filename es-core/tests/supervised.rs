//! Supervised projection runners on `MemoryStore`: read-your-writes, restarts, standby
//! replicas, health and a clean shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::conformance::projection::Tested;
use es_core::conformance::repository::{Counter, Open};
use es_core::projection::{
    HandlerError, OnFailure, Projection, ProjectionRunner, ProjectionStore, RetryPolicy, RunState,
    Supervision, WaitError,
};
use es_core::{
    CommandContext, MemoryStore, MemoryTransaction, Position, RecordedEvent, Repository,
};

/// Counts the events it handled; fails while `failing` is set. Not `Sync` (a projection need
/// not be, to be spawned).
#[derive(Clone, Default)]
struct Tally {
    handled: Arc<Mutex<Vec<Position>>>,
    failing: Arc<AtomicBool>,
    _not_sync: std::cell::Cell<()>,
}

impl Projection<MemoryStore> for Tally {
    type Event = Tested;

    fn name(&self) -> &str {
        "tally"
    }

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction,
        _: &Tested,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("the read model is down".into());
        }
        let handled = self.handled.clone();
        let position = envelope.position;
        transaction.on_commit(move || handled.lock().unwrap().push(position));
        Ok(())
    }

    async fn reset(&mut self, _: &mut MemoryTransaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn quick() -> Supervision {
    Supervision {
        backoff: es_core::backoff::Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(20),
        ),
        standby_poll: Duration::from_millis(10),
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_s_effect_is_waited_for_and_the_runner_shuts_down_releasing_its_lock() {
    let store = MemoryStore::new();
    let tally = Tally::default();
    let running = ProjectionRunner::new(store.clone(), tally.clone())
        .idle_timeout(Duration::from_secs(30))
        .spawn_with(quick());
    let counters = Repository::<Counter, _>::new(store.clone());
    for n in 0..5 {
        let executed = counters
            .create(&format!("c{n}"), &Open(n), &CommandContext::new())
            .await
            .unwrap();
        let position = executed.last_position.unwrap();
        running
            .wait_for(position, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            tally.handled.lock().unwrap().contains(&position),
            "read-your-writes"
        );
    }
    let health = running.health();
    assert_eq!(health.state, RunState::Running);
    assert_eq!(health.projection, "tally");
    assert_eq!(health.restarts, 0);
    assert!(health.checkpoint.is_some());
    let far = Position {
        transaction: u64::MAX,
        sequence: u64::MAX,
    };
    let timed_out = running.wait_for(far, Duration::from_millis(50)).await;
    assert!(
        matches!(timed_out, Err(WaitError::Timeout { .. })),
        "{timed_out:?}"
    );
    running.shutdown().await;
    assert_eq!(running.health().state, RunState::Stopped);
    assert!(
        store.try_lock("tally").await.unwrap().is_some(),
        "the lock is free as soon as shutdown returns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_runner_restarts_with_backoff_and_reports_it() {
    let store = MemoryStore::new();
    let tally = Tally::default();
    tally.failing.store(true, Ordering::SeqCst);
    let counters = Repository::<Counter, _>::new(store.clone());
    let executed = counters
        .create("c", &Open(1), &CommandContext::new())
        .await
        .unwrap();
    let running = ProjectionRunner::new(store.clone(), tally.clone())
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .on_failure(OnFailure::Stop)
        .spawn_with(quick());
    eventually("the runner has restarted twice", || {
        running.health().restarts >= 2
    })
    .await;
    let health = running.health();
    assert!(
        matches!(health.state, RunState::Retrying { .. } | RunState::Running),
        "{health:?}"
    );
    assert!(
        health
            .last_error
            .unwrap()
            .contains("the read model is down")
    );
    tally.failing.store(false, Ordering::SeqCst);
    running
        .wait_for(executed.last_position.unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    eventually("the runner runs again", || {
        running.health().state == RunState::Running
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_stands_by_and_takes_over() {
    let store = MemoryStore::new();
    let first_tally = Tally::default();
    let second_tally = Tally::default();
    let first = ProjectionRunner::new(store.clone(), first_tally.clone()).spawn_with(quick());
    eventually("the first runs", || {
        first.health().state == RunState::Running
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = ProjectionRunner::new(store.clone(), second_tally.clone()).spawn_with(quick());
    eventually("the second stands by", || {
        second.health().state == RunState::Standby
    })
    .await;
    let counters = Repository::<Counter, _>::new(store.clone());
    let before = counters
        .create("a", &Open(1), &CommandContext::new())
        .await
        .unwrap();
    first
        .wait_for(before.last_position.unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    first.shutdown().await;
    let after = counters
        .create("b", &Open(2), &CommandContext::new())
        .await
        .unwrap();
    second
        .wait_for(after.last_position.unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.health().state, RunState::Running);
    assert_eq!(first_tally.handled.lock().unwrap().len(), 1);
    assert_eq!(
        *second_tally.handled.lock().unwrap(),
        [after.last_position.unwrap()],
        "the replica continued from the checkpoint"
    );
    second.shutdown().await;
}
