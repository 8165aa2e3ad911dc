//! The projection conformance suite: how a [`ProjectionRunner`] behaves on a store, written
//! once for every [`ProjectionStore`].
//!
//! A store's test file supplies a [`ProjectionHarness`]: the store, a second instance of it on the
//! same database (another process's view), a tiny read model written through the store's
//! transaction, and a way to take a runner's lock away (as a network cut or an expired lease
//! would). Then one macro call runs every case:
//!
//! ```ignore
//! es_core::projection_conformance_tests!(MyHarness::new().await);
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{append_to, event, events};
use crate::envelope::{Position, RecordedEvent};
use crate::event::{DecodeError, Event, EventSchema, EventType};
use crate::json::RawJson;
use crate::memory::{MemoryStore, MemoryTransaction};
use crate::projection::{
    Decoded, HandlerError, OnFailure, Progress, Projection, ProjectionError, ProjectionRunner,
    ProjectionStore, RetryPolicy,
};
use crate::store::{ExpectedVersion, StoreError};
use crate::stream::{LogScope, StreamKey, Tenant};

/// What the projection suite needs of a store besides the store itself.
pub trait ProjectionHarness: Send + Sync + 'static {
    /// The store under test.
    type Store: ProjectionStore;

    /// The store of this case: empty when the case starts.
    fn store(&self) -> Self::Store;

    /// Another instance of the same store on the same database, as another process would open
    /// it (for an in-memory store: a clone).
    fn other_instance(&self) -> impl Future<Output = Self::Store> + Send;

    /// The read model's write: records in `transaction` that `projection` handled `event`. It
    /// must become visible when, and only when, the transaction commits.
    fn record(
        &self,
        transaction: &mut <Self::Store as ProjectionStore>::Transaction,
        projection: &str,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Removes the records of `projection` in `transaction` (a rebuild's reset).
    fn clear(
        &self,
        transaction: &mut <Self::Store as ProjectionStore>::Transaction,
        projection: &str,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The event ids `projection` recorded, committed, in the order they were recorded.
    fn recorded(&self, projection: &str) -> impl Future<Output = Vec<Uuid>> + Send;

    /// Takes the lock of `projection` away from the runner holding it, as a network cut, an
    /// expired lease or an operator would; another runner may then take it.
    fn break_lock(&self, projection: &str) -> impl Future<Output = ()> + Send;
}

/// The harness of [`MemoryStore`]: the read model is a map updated through
/// [`MemoryTransaction::on_commit`].
#[derive(Debug, Clone, Default)]
pub struct MemoryHarness {
    store: MemoryStore,
    read_model: Arc<Mutex<HashMap<String, Vec<Uuid>>>>,
}

impl MemoryHarness {
    fn model(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Uuid>>> {
        self.read_model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ProjectionHarness for MemoryHarness {
    type Store = MemoryStore;

    fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn other_instance(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn record(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let model = self.read_model.clone();
        let (projection, event_id) = (projection.to_owned(), event.event_id);
        transaction.on_commit(move || {
            model
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(projection)
                .or_default()
                .push(event_id);
        });
        Ok(())
    }

    async fn clear(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
    ) -> Result<(), HandlerError> {
        let model = self.read_model.clone();
        let projection = projection.to_owned();
        transaction.on_commit(move || {
            model
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&projection);
        });
        Ok(())
    }

    async fn recorded(&self, projection: &str) -> Vec<Uuid> {
        self.model().get(projection).cloned().unwrap_or_default()
    }

    async fn break_lock(&self, projection: &str) {
        self.store.break_lock(projection);
    }
}

/// Any harness's store behind a [`DynStore`](crate::DynStore): the suites run on the erased
/// store as on the store itself.
#[derive(Debug)]
pub struct DynHarness<H> {
    inner: H,
}

impl<H: ProjectionHarness> DynHarness<H>
where
    <H::Store as ProjectionStore>::Transaction: 'static,
    <H::Store as ProjectionStore>::Lock: Sync + 'static,
{
    /// Wraps `inner`.
    pub fn new(inner: H) -> Self {
        Self { inner }
    }

    fn transaction(
        transaction: &mut crate::DynTransaction,
    ) -> Result<&mut <H::Store as ProjectionStore>::Transaction, HandlerError> {
        transaction
            .downcast_mut()
            .ok_or_else(|| "a transaction of another store".into())
    }
}

impl<H: ProjectionHarness> ProjectionHarness for DynHarness<H>
where
    <H::Store as ProjectionStore>::Transaction: 'static,
    <H::Store as ProjectionStore>::Lock: Sync + 'static,
{
    type Store = crate::DynStore;

    fn store(&self) -> crate::DynStore {
        crate::DynStore::new(self.inner.store())
    }

    async fn other_instance(&self) -> crate::DynStore {
        crate::DynStore::new(self.inner.other_instance().await)
    }

    async fn record(
        &self,
        transaction: &mut crate::DynTransaction,
        projection: &str,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let transaction = Self::transaction(transaction)?;
        self.inner.record(transaction, projection, event).await
    }

    async fn clear(
        &self,
        transaction: &mut crate::DynTransaction,
        projection: &str,
    ) -> Result<(), HandlerError> {
        let transaction = Self::transaction(transaction)?;
        self.inner.clear(transaction, projection).await
    }

    async fn recorded(&self, projection: &str) -> Vec<Uuid> {
        self.inner.recorded(projection).await
    }

    async fn break_lock(&self, projection: &str) {
        self.inner.break_lock(projection).await;
    }
}

/// The suite's events: `Tested` (payload `{"n": n}`), `Measured` (payload `{"value": x}`) and
/// `Broken`, which is declared but never decodes. Events of any other type are not the
/// projection's and are skipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tested {
    /// A numbered event.
    Numbered(u64),
    /// A measurement.
    Measured(f64),
    /// Never produced: `Broken` payloads do not decode.
    Broken,
}

impl Event for Tested {
    const TYPES: &'static [EventType] = &[
        EventType {
            name: "Tested",
            aliases: &[],
            version: 1,
        },
        EventType {
            name: "Measured",
            aliases: &[],
            version: 1,
        },
        EventType {
            name: "Broken",
            aliases: &[],
            version: 1,
        },
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Tested::Numbered(_) => "Tested",
            Tested::Measured(_) => "Measured",
            Tested::Broken => "Broken",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<RawJson, crate::json::EncodeError> {
        match self {
            Tested::Numbered(n) => RawJson::try_encode(&serde_json::json!({ "n": n })),
            Tested::Measured(value) => RawJson::try_encode(&Measurement { value: *value }),
            Tested::Broken => RawJson::try_encode(&serde_json::json!({ "broken": true })),
        }
    }

    fn decode(event_type: &str, schema_version: u32, payload: &str) -> Result<Self, DecodeError> {
        #[derive(serde::Deserialize)]
        struct Measured {
            value: f64,
        }
        #[derive(serde::Deserialize)]
        struct Numbered {
            n: u64,
        }
        #[derive(serde::Deserialize)]
        struct Broken {
            #[allow(dead_code)]
            never_present: u64,
        }
        let invalid = |source| DecodeError::InvalidPayload {
            event_type: event_type.to_owned(),
            version: schema_version,
            source,
        };
        match event_type {
            "Tested" => serde_json::from_str::<Numbered>(payload)
                .map(|numbered| Tested::Numbered(numbered.n))
                .map_err(invalid),
            "Measured" => serde_json::from_str::<Measured>(payload)
                .map(|measured| Tested::Measured(measured.value))
                .map_err(invalid),
            "Broken" => serde_json::from_str::<Broken>(payload)
                .map(|_| Tested::Broken)
                .map_err(invalid),
            other => Err(DecodeError::UnknownType {
                event_type: other.to_owned(),
            }),
        }
    }

    fn schemas() -> Vec<EventSchema> {
        Vec::new()
    }
}

/// The payload of `Measured`: a struct, so that serializing a NaN reaches the serializer (a
/// `serde_json::Value` would have turned it into `null` already).
#[derive(serde::Serialize)]
struct Measurement {
    value: f64,
}

/// A projection that records every `Tested` event it handles in the harness's read model; it
/// can be told to fail on one event a number of times, to take its time, and to handle whole
/// batches at once (failing a batch that holds its poisoned event without saying which).
pub struct Recorder<H: ProjectionHarness> {
    harness: Arc<H>,
    name: String,
    poison: Option<u64>,
    failures_left: Arc<AtomicU32>,
    attempts_on_poison: Arc<AtomicU32>,
    pause: Duration,
    set_based: bool,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl<H: ProjectionHarness> std::fmt::Debug for Recorder<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("name", &self.name)
            .finish()
    }
}

impl<H: ProjectionHarness> Recorder<H> {
    fn new(harness: &Arc<H>, name: &str) -> Self {
        Self {
            harness: harness.clone(),
            name: name.to_owned(),
            poison: None,
            failures_left: Arc::new(AtomicU32::new(0)),
            attempts_on_poison: Arc::new(AtomicU32::new(0)),
            pause: Duration::ZERO,
            set_based: false,
            batches: Arc::default(),
        }
    }

    /// Handles batches as a set-based read model would: all at once, and a batch holding the
    /// poisoned event fails as a whole, naming no event.
    fn set_based(mut self) -> Self {
        self.set_based = true;
        self
    }

    /// Fails if event `n` is poisoned and has failures left, counting the attempt.
    fn poisoned(&self, event: &Tested) -> Result<(), HandlerError> {
        if let Tested::Numbered(n) = event
            && self.poison == Some(*n)
        {
            self.attempts_on_poison.fetch_add(1, Ordering::SeqCst);
            let left = self.failures_left.load(Ordering::SeqCst);
            if left > 0 {
                self.failures_left.store(left - 1, Ordering::SeqCst);
                return Err(format!("event {n} is poisoned").into());
            }
        }
        Ok(())
    }

    /// Fails on event `n` the next `times` times it is handled.
    fn failing_on(mut self, n: u64, times: u32) -> Self {
        self.poison = Some(n);
        self.failures_left.store(times, Ordering::SeqCst);
        self
    }

    fn pausing(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }
}

impl<H: ProjectionHarness> Projection<H::Store> for Recorder<H> {
    type Event = Tested;

    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &mut self,
        transaction: &mut <H::Store as ProjectionStore>::Transaction,
        event: &Tested,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        self.poisoned(event)?;
        self.harness.record(transaction, &self.name, envelope).await
    }

    async fn handle_batch(
        &mut self,
        transaction: &mut <H::Store as ProjectionStore>::Transaction,
        events: &[Decoded<'_, Tested>],
    ) -> Result<(), HandlerError> {
        if !self.set_based {
            return crate::projection::handle_each(self, transaction, events).await;
        }
        self.batches.lock().unwrap().push(events.len());
        for decoded in events {
            self.poisoned(&decoded.event)?;
        }
        for decoded in events {
            self.harness
                .record(transaction, &self.name, decoded.envelope)
                .await?;
        }
        Ok(())
    }

    async fn reset(
        &mut self,
        transaction: &mut <H::Store as ProjectionStore>::Transaction,
    ) -> Result<(), HandlerError> {
        self.harness.clear(transaction, &self.name).await
    }
}

fn stream(id: &str) -> StreamKey<'_> {
    StreamKey::new("conformance", id)
}

fn typed(event_type: &str, n: u64) -> crate::envelope::NewEvent {
    let mut event = event(n);
    event.event_type = event_type.to_owned();
    event
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// The whole log, in order.
async fn log<S: ProjectionStore>(store: &S, scope: LogScope<'_>) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_all(scope, after, 1000)
            .await
            .expect("read_all works");
        let Some(last) = page.last() else { return all };
        after = last.position;
        all.extend(page);
    }
}

/// The ids of the log's `Tested` events, in log order.
async fn tested_ids<S: ProjectionStore>(store: &S, scope: LogScope<'_>) -> Vec<Uuid> {
    log(store, scope)
        .await
        .into_iter()
        .filter(|e| e.event_type == "Tested")
        .map(|e| e.event_id)
        .collect()
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn store_error(result: &Result<Position, ProjectionError>) -> Option<&StoreError> {
    match result {
        Err(ProjectionError::Store { source, .. }) => Some(source),
        _ => None,
    }
}

/// Catch-up handles each of the projection's events once, in log order, across streams and
/// tenants; events of other types are skipped; the checkpoint ends at the last event; a second
/// catch-up finds nothing to do.
pub async fn catch_up_handles_each_event_once_in_log_order<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    for round in 0..5 {
        append_to(
            &store,
            stream("a"),
            ExpectedVersion::Any,
            events(round * 10, 3),
        )
        .await;
        append_to(
            &store,
            stream("b").in_tenant("acme"),
            ExpectedVersion::Any,
            vec![typed("Other", round)],
        )
        .await;
        append_to(
            &store,
            stream("c"),
            ExpectedVersion::Any,
            events(round * 10 + 5, 2),
        )
        .await;
    }
    let mut runner =
        ProjectionRunner::new(store.clone(), Recorder::new(&harness, "catch_up")).batch_size(4);
    let reached = runner.catch_up().await.expect("catch-up works");
    let all = log(&store, LogScope::AllTenants).await;
    assert_eq!(
        reached,
        all.last().unwrap().position,
        "the checkpoint is the last event"
    );
    assert_eq!(runner.checkpoint().await.unwrap(), reached);
    assert_eq!(
        harness.recorded("catch_up").await,
        tested_ids(&store, LogScope::AllTenants).await,
        "each event once, in log order, others skipped"
    );
    assert_eq!(runner.catch_up().await.unwrap(), reached);
    assert_eq!(harness.recorded("catch_up").await.len(), 25);
    assert!(runner.parked().await.unwrap().is_empty());
}

/// A runner aborted in the middle of its work (a crash) leaves no half-committed batch: a new
/// runner resumes from the checkpoint and the read model ends with each event exactly once.
pub async fn an_aborted_runner_resumes_without_handling_an_event_twice<H: ProjectionHarness>(
    harness: H,
) {
    let harness = Arc::new(harness);
    let store = harness.store();
    for n in 0..10 {
        append_to(
            &store,
            stream(&format!("s{n}")),
            ExpectedVersion::Any,
            events(n * 10, 6),
        )
        .await;
    }
    for abort_after in [15, 35, 60] {
        let runner_store = store.clone();
        let projection = Recorder::new(&harness, "aborted").pausing(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut runner = ProjectionRunner::new(runner_store, projection).batch_size(7);
            runner.catch_up().await
        });
        tokio::time::sleep(Duration::from_millis(abort_after)).await;
        task.abort();
        let _ = task.await;
        let recorded = harness.recorded("aborted").await;
        let distinct: std::collections::HashSet<&Uuid> = recorded.iter().collect();
        assert_eq!(
            distinct.len(),
            recorded.len(),
            "no event handled twice after an abort"
        );
    }
    let other = harness.other_instance().await;
    let mut runner = ProjectionRunner::new(other, Recorder::new(&harness, "aborted")).batch_size(7);
    eventually("the aborted runner's lock is free", async || {
        match runner.catch_up().await {
            Ok(_) => true,
            Err(ProjectionError::AlreadyRunning { .. }) => false,
            Err(error) => panic!("catch-up failed: {error}"),
        }
    })
    .await;
    assert_eq!(
        harness.recorded("aborted").await,
        tested_ids(&store, LogScope::AllTenants).await,
        "every event exactly once, in order"
    );
}

/// A handler error rolls its batch back (read-model writes included) and the batch is redone one
/// event per transaction, so the events before the failing one are not handled twice.
pub async fn a_failed_batch_is_redone_event_by_event<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    append_to(
        &store,
        stream("s"),
        ExpectedVersion::NoStream,
        events(1, 10),
    )
    .await;
    let projection = Recorder::new(&harness, "redone").failing_on(6, 1);
    let attempts = projection.attempts_on_poison.clone();
    let mut runner = ProjectionRunner::new(store.clone(), projection)
        .batch_size(10)
        .retry(fast_retries(3));
    runner.catch_up().await.expect("the retry succeeds");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "failed once, then succeeded"
    );
    assert_eq!(
        harness.recorded("redone").await,
        tested_ids(&store, LogScope::AllTenants).await
    );
    assert!(runner.parked().await.unwrap().is_empty());
}

/// A batch handler gets whole batches of the projection's decoded events, in log order, and
/// each event is handled exactly once across catch-ups.
pub async fn a_batch_handler_gets_whole_batches_exactly_once<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    append_to(
        &store,
        stream("a"),
        ExpectedVersion::NoStream,
        events(1, 12),
    )
    .await;
    append_to(
        &store,
        stream("b"),
        ExpectedVersion::NoStream,
        vec![typed("Other", 13)],
    )
    .await;
    append_to(
        &store,
        stream("c"),
        ExpectedVersion::NoStream,
        events(14, 12),
    )
    .await;
    let projection = Recorder::new(&harness, "set_based").set_based();
    let batches = projection.batches.clone();
    let mut runner = ProjectionRunner::new(store.clone(), projection).batch_size(10);
    runner.catch_up().await.expect("catch-up works");
    assert_eq!(
        *batches.lock().unwrap(),
        [10, 9, 5],
        "pages of 10 events, the other type skipped"
    );
    append_to(
        &store,
        stream("a"),
        ExpectedVersion::Exact(12),
        events(26, 3),
    )
    .await;
    runner.catch_up().await.unwrap();
    assert_eq!(batches.lock().unwrap().last(), Some(&3));
    assert_eq!(
        harness.recorded("set_based").await,
        tested_ids(&store, LogScope::AllTenants).await,
        "each event once, in log order"
    );
}

/// A batch handler failing without naming the event is split: the batch is redone one event
/// per transaction, the bad event is tried `max_attempts` times alone and parked, and every
/// other event of the batch commits once.
pub async fn a_failing_batch_is_split_to_park_the_one_bad_event<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    append_to(
        &store,
        stream("s"),
        ExpectedVersion::NoStream,
        events(1, 20),
    )
    .await;
    let projection = Recorder::new(&harness, "split")
        .set_based()
        .failing_on(7, u32::MAX);
    let attempts = projection.attempts_on_poison.clone();
    let mut runner = ProjectionRunner::new(store.clone(), projection)
        .batch_size(10)
        .retry(fast_retries(3));
    runner.catch_up().await.expect("the bad event is parked");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        4,
        "once in its batch, then max_attempts alone"
    );
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].stream_version, 7);
    let poisoned = log(&store, LogScope::AllTenants).await[6].event_id;
    let mut expected = tested_ids(&store, LogScope::AllTenants).await;
    expected.retain(|id| *id != poisoned);
    assert_eq!(
        harness.recorded("split").await,
        expected,
        "the other 19 once each, in order"
    );
}

/// An event whose handler keeps failing is tried exactly `max_attempts` times, then parked with
/// its stream, version, type, error and attempts; later events are handled; once the cause is
/// mended, retrying the parked event handles it and removes it from the list.
pub async fn a_poison_event_is_parked_after_its_attempts_and_retried_once_fixed<
    H: ProjectionHarness,
>(
    harness: H,
) {
    let harness = Arc::new(harness);
    let store = harness.store();
    let poisoned = stream("poisoned").in_tenant("acme");
    append_to(&store, stream("s"), ExpectedVersion::NoStream, events(1, 3)).await;
    append_to(&store, poisoned, ExpectedVersion::NoStream, events(4, 1)).await;
    append_to(&store, stream("s"), ExpectedVersion::Exact(3), events(5, 3)).await;
    let projection = Recorder::new(&harness, "poison").failing_on(4, u32::MAX);
    let attempts = projection.attempts_on_poison.clone();
    let failures_left = projection.failures_left.clone();
    let mut runner = ProjectionRunner::new(store.clone(), projection)
        .batch_size(100)
        .retry(fast_retries(3));
    runner
        .catch_up()
        .await
        .expect("the poison event is parked, not fatal");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "exactly max_attempts attempts"
    );
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    let poison_event = log(&store, LogScope::AllTenants)
        .await
        .into_iter()
        .find(|e| e.stream() == poisoned)
        .unwrap();
    assert_eq!(letter.projection, "poison");
    assert_eq!(
        (letter.position, letter.event_id),
        (poison_event.position, poison_event.event_id)
    );
    assert_eq!(
        (
            letter.tenant.as_str(),
            letter.stream_type.as_str(),
            letter.stream_id.as_str(),
            letter.stream_version
        ),
        ("acme", "conformance", "poisoned", 1)
    );
    assert_eq!((letter.event_type.as_str(), letter.attempts), ("Tested", 3));
    assert!(
        letter.error.contains("event 4 is poisoned"),
        "{}",
        letter.error
    );
    let recorded = harness.recorded("poison").await;
    assert_eq!(recorded.len(), 6, "the others are handled");
    assert!(!recorded.contains(&poison_event.event_id));

    // Still failing: it stays parked with one more attempt.
    assert!(!runner.retry_parked(letter.position).await.unwrap());
    assert_eq!(runner.parked().await.unwrap()[0].attempts, 4);
    failures_left.store(0, Ordering::SeqCst);
    assert!(runner.retry_parked(letter.position).await.unwrap());
    assert!(runner.parked().await.unwrap().is_empty());
    assert!(
        harness
            .recorded("poison")
            .await
            .contains(&poison_event.event_id)
    );
    let missing = Position {
        transaction: u64::MAX,
        sequence: u64::MAX,
    };
    assert!(matches!(
        runner.retry_parked(missing).await,
        Err(ProjectionError::NotParked { .. })
    ));
}

/// With [`OnFailure::Stop`], the runner stops at the failing event with an error naming it, and
/// its checkpoint stays right before it.
pub async fn the_stop_policy_stops_before_the_failing_event<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    append_to(&store, stream("s"), ExpectedVersion::NoStream, events(1, 5)).await;
    let mut runner = ProjectionRunner::new(
        store.clone(),
        Recorder::new(&harness, "stop").failing_on(3, u32::MAX),
    )
    .retry(fast_retries(2))
    .on_failure(OnFailure::Stop);
    let stopped = runner.catch_up().await;
    let log = log(&store, LogScope::AllTenants).await;
    match &stopped {
        Err(ProjectionError::Handler {
            position,
            stream: failed,
            stream_version,
            event_type,
            attempts,
            ..
        }) => {
            assert_eq!(*position, log[2].position);
            assert_eq!((failed.as_key(), *stream_version), (stream("s"), 3));
            assert_eq!((event_type.as_str(), *attempts), ("Tested", 2));
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert_eq!(runner.checkpoint().await.unwrap(), log[1].position);
    assert_eq!(harness.recorded("stop").await.len(), 2);
    assert!(runner.parked().await.unwrap().is_empty());
}

/// An event of a type the projection declares whose payload does not decode is parked after one
/// attempt (decoding again would fail again), never skipped.
pub async fn an_undecodable_event_is_parked_without_retries<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    append_to(
        &store,
        stream("s"),
        ExpectedVersion::NoStream,
        vec![event(1), typed("Broken", 2), event(3)],
    )
    .await;
    let mut runner = ProjectionRunner::new(store.clone(), Recorder::new(&harness, "undecodable"))
        .retry(fast_retries(5));
    runner.catch_up().await.unwrap();
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].event_type.as_str(), parked[0].attempts),
        ("Broken", 1)
    );
    assert!(parked[0].error.contains("decode"), "{}", parked[0].error);
    assert_eq!(harness.recorded("undecodable").await.len(), 2);
}

/// A rebuild clears the read model, the checkpoint and the parked events together, replays the
/// whole log and reports progress that never goes back and ends complete.
pub async fn rebuild_clears_and_replays_with_progress<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    for n in 0..6 {
        append_to(
            &store,
            stream(&format!("s{n}")),
            ExpectedVersion::Any,
            events(n * 10, 5),
        )
        .await;
    }
    let mut runner = ProjectionRunner::new(
        store.clone(),
        Recorder::new(&harness, "rebuilt").failing_on(11, 1),
    )
    .batch_size(4)
    .retry(fast_retries(1));
    runner.catch_up().await.unwrap();
    assert_eq!(runner.parked().await.unwrap().len(), 1);
    let mut reports: Vec<Progress> = Vec::new();
    let reached = runner
        .rebuild(|progress| reports.push(progress))
        .await
        .unwrap();
    assert_eq!(
        reached,
        log(&store, LogScope::AllTenants)
            .await
            .last()
            .unwrap()
            .position
    );
    assert_eq!(
        harness.recorded("rebuilt").await,
        tested_ids(&store, LogScope::AllTenants).await
    );
    assert!(
        runner.parked().await.unwrap().is_empty(),
        "the rebuild cleared the parked event"
    );
    assert!(!reports.is_empty());
    assert!(
        reports.windows(2).all(|w| w[0].done <= w[1].done),
        "progress never goes back"
    );
    let last = reports.last().unwrap();
    assert_eq!((last.done, last.total), (30, 30));
}

/// One runner per projection at a time, whether the other runs in this process or on another
/// instance; a runner that stops (shutdown or end of catch-up) releases the lock before it
/// returns, so the next one can start at once, however often that happens.
pub async fn one_runner_at_a_time_and_a_stopped_runner_releases_its_lock_at_once<
    H: ProjectionHarness,
>(
    harness: H,
) {
    let harness = Arc::new(harness);
    let store = harness.store();
    let other = harness.other_instance().await;
    append_to(&store, stream("s"), ExpectedVersion::NoStream, events(1, 3)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let store = store.clone();
        let projection = Recorder::new(&harness, "single");
        async move {
            let mut runner =
                ProjectionRunner::new(store, projection).idle_timeout(Duration::from_millis(50));
            runner.run(async { drop(stopped.await) }).await
        }
    });
    eventually("the first runner handled the log", async || {
        harness.recorded("single").await.len() == 3
    })
    .await;
    for instance in [store.clone(), other.clone()] {
        let mut second = ProjectionRunner::new(instance, Recorder::new(&harness, "single"));
        assert!(
            matches!(
                second.catch_up().await,
                Err(ProjectionError::AlreadyRunning { .. })
            ),
            "a second runner is refused while the first runs"
        );
    }
    stop.send(()).unwrap();
    running
        .await
        .unwrap()
        .expect("the first runner stops cleanly");
    // Stop and start again and again, alternating instances: the lock is free every time the
    // previous runner has returned.
    for round in 0..20u64 {
        let instance = if round % 2 == 0 {
            other.clone()
        } else {
            store.clone()
        };
        let mut runner = ProjectionRunner::new(instance, Recorder::new(&harness, "single"))
            .idle_timeout(Duration::from_millis(20));
        append_to(
            &store,
            stream("s"),
            ExpectedVersion::Any,
            events(100 + round, 1),
        )
        .await;
        let reached = runner.run(async {}).await.unwrap_or_else(|error| {
            panic!("round {round}: the previous runner's lock was not released: {error}")
        });
        let _ = reached;
        let mut next = ProjectionRunner::new(store.clone(), Recorder::new(&harness, "single"));
        next.catch_up()
            .await
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
    }
    assert_eq!(
        harness.recorded("single").await,
        tested_ids(&store, LogScope::AllTenants).await
    );
}

/// A runner whose lock was taken away commits nothing more: its next commit fails with
/// [`StoreError::LockLost`] and its batch (read-model writes included) rolls back; the runner
/// that takes over finishes the log, and the read model holds each event exactly once.
pub async fn a_runner_that_lost_its_lock_commits_nothing<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    append_to(
        &store,
        stream("s"),
        ExpectedVersion::NoStream,
        events(1, 40),
    )
    .await;
    let slow = Recorder::new(&harness, "fenced").pausing(Duration::from_millis(15));
    let first = tokio::spawn({
        let store = store.clone();
        async move {
            ProjectionRunner::new(store, slow)
                .batch_size(5)
                .catch_up()
                .await
        }
    });
    eventually("the first runner committed a batch", async || {
        !harness.recorded("fenced").await.is_empty()
    })
    .await;
    harness.break_lock("fenced").await;
    let lost = first.await.unwrap();
    assert!(
        matches!(store_error(&lost), Some(StoreError::LockLost { .. })),
        "the runner that lost its lock fails with LockLost: {lost:?}"
    );
    let before_takeover = harness.recorded("fenced").await;
    let other = harness.other_instance().await;
    let mut second = ProjectionRunner::new(other, Recorder::new(&harness, "fenced")).batch_size(5);
    eventually(
        "another runner takes the projection over",
        async || match second.catch_up().await {
            Ok(_) => true,
            Err(ProjectionError::AlreadyRunning { .. }) => false,
            Err(error) => panic!("the second runner failed: {error}"),
        },
    )
    .await;
    let recorded = harness.recorded("fenced").await;
    assert!(recorded.starts_with(&before_takeover));
    assert_eq!(
        recorded,
        tested_ids(&store, LogScope::AllTenants).await,
        "each event exactly once"
    );
}

/// Live tailing: a running runner handles new events soon after they are appended, well before
/// its idle timeout, and returns promptly when shut down.
pub async fn live_tailing_wakes_on_appends_and_stops_on_shutdown<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    let other = harness.other_instance().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let store = store.clone();
        let projection = Recorder::new(&harness, "live");
        async move {
            let mut runner =
                ProjectionRunner::new(store, projection).idle_timeout(Duration::from_secs(3));
            runner.run(async { drop(stopped.await) }).await
        }
    });
    for n in 0..5 {
        let started = Instant::now();
        append_to(&store, stream("s"), ExpectedVersion::Any, events(n, 1)).await;
        eventually("the new event is handled", async || {
            harness.recorded("live").await.len() as u64 == n + 1
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "woken by the append, not the timeout"
        );
    }
    // An append through another instance (another process) is seen too, at the latest at the
    // idle timeout.
    append_to(&other, stream("t"), ExpectedVersion::Any, events(9, 1)).await;
    eventually("another instance's append is handled", async || {
        harness.recorded("live").await.len() == 6
    })
    .await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    let reached = running.await.unwrap().expect("stops cleanly");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "shutdown is prompt"
    );
    assert_eq!(
        reached,
        log(&store, LogScope::AllTenants)
            .await
            .last()
            .unwrap()
            .position
    );
}

/// A runner scoped to a tenant handles only that tenant's events, keeps its checkpoint, lock and
/// dead letters under `<name>@<tenant>`, and can run beside the same projection of other
/// tenants; envelopes name each event's tenant.
pub async fn a_tenant_scoped_runner_sees_only_its_tenant<H: ProjectionHarness>(harness: H) {
    let harness = Arc::new(harness);
    let store = harness.store();
    for tenant in ["acme", "globex", "acme", "initech"] {
        append_to(
            &store,
            stream("s").in_tenant(tenant),
            ExpectedVersion::Any,
            events(1, 2),
        )
        .await;
    }
    let acme = Tenant::new("acme").unwrap();
    let globex = Tenant::new("globex").unwrap();
    let mut for_acme = ProjectionRunner::new(store.clone(), Recorder::new(&harness, "tenants"))
        .for_tenant(acme.clone());
    assert_eq!(for_acme.key(), "tenants@acme");
    let held = store
        .try_lock("tenants@globex")
        .await
        .unwrap()
        .expect("free");
    for_acme
        .catch_up()
        .await
        .expect("another tenant's lock does not block this one");
    drop(held);
    let mut for_globex =
        ProjectionRunner::new(store.clone(), Recorder::new(&harness, "tenants")).for_tenant(globex);
    for_globex.catch_up().await.unwrap();
    let acme_ids = tested_ids(&store, LogScope::Tenant("acme")).await;
    let globex_ids = tested_ids(&store, LogScope::Tenant("globex")).await;
    assert_eq!(acme_ids.len(), 4);
    let recorded = harness.recorded("tenants").await;
    assert_eq!(
        recorded,
        [acme_ids, globex_ids].concat(),
        "each tenant's events, nothing of initech"
    );
    let acme_checkpoint = store
        .load_checkpoint("tenants@acme")
        .await
        .unwrap()
        .unwrap();
    let last_acme = log(&store, LogScope::Tenant("acme"))
        .await
        .last()
        .unwrap()
        .position;
    assert_eq!(acme_checkpoint, last_acme);
    assert_eq!(store.load_checkpoint("tenants").await.unwrap(), None);
}

/// Generates one `#[tokio::test]` per projection conformance case; `$make` is an async
/// expression yielding a fresh [`ProjectionHarness`], evaluated once per case.
#[macro_export]
macro_rules! projection_conformance_tests {
    ($make:expr) => {
        $crate::projection_conformance_tests!(@cases $make;
            catch_up_handles_each_event_once_in_log_order,
            an_aborted_runner_resumes_without_handling_an_event_twice,
            a_failed_batch_is_redone_event_by_event,
            a_batch_handler_gets_whole_batches_exactly_once,
            a_failing_batch_is_split_to_park_the_one_bad_event,
            a_poison_event_is_parked_after_its_attempts_and_retried_once_fixed,
            the_stop_policy_stops_before_the_failing_event,
            an_undecodable_event_is_parked_without_retries,
            rebuild_clears_and_replays_with_progress,
            one_runner_at_a_time_and_a_stopped_runner_releases_its_lock_at_once,
            a_runner_that_lost_its_lock_commits_nothing,
            live_tailing_wakes_on_appends_and_stops_on_shutdown,
            a_tenant_scoped_runner_sees_only_its_tenant);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make.await;
                $crate::conformance::projection::$case(harness).await;
            }
        )*
    };
}
