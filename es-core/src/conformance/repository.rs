//! The repository conformance suite: what a [`Repository`] promises on every store, with and
//! without its cache: not-found, expected versions, idempotent commands, queued commands on a
//! hot stream, tenants, snapshots.
//!
//! ```ignore
//! es_core::repository_conformance_tests!(async { es_core::MemoryStore::new() });
//! ```

use std::collections::HashSet;

use futures_util::TryStreamExt;

use super::projection::Tested;
use crate::aggregate::{Aggregate, Handle};
use crate::envelope::CommandContext;
use crate::json::RawJson;
use crate::repository::{ExecuteError, LoadError, Repository, StartedFrom};
use crate::store::{EventStore, Until};
use crate::stream::{LogScope, StreamKey, Tenant};

/// The suite's aggregate: a counter of the numbers added to it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    /// The sum of the numbers added.
    pub total: u64,
    /// How many numbers were added.
    pub count: u64,
}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    const SNAPSHOT_EVERY: Option<u64> = Some(5);
    type Event = Tested;

    fn apply_event(&mut self, event: &Tested) {
        if let Tested::Numbered(n) = event {
            self.total += n;
            self.count += 1;
        }
    }

    fn encode_state(&self) -> Option<Result<RawJson, serde_json::Error>> {
        Some(RawJson::encode(self))
    }

    fn decode_state(state: &str) -> Option<Result<Self, serde_json::Error>> {
        Some(serde_json::from_str(state))
    }
}

/// Starts a counter with a first number, or adds to an existing one.
#[derive(Debug, Clone, Copy)]
pub struct Open(pub u64);

/// Adds a number to a counter that must exist; refuses zero.
#[derive(Debug, Clone, Copy)]
pub struct Add(pub u64);

/// Adds numbers up to a limit: refused once the total would pass it.
#[derive(Debug, Clone, Copy)]
pub struct AddUpTo {
    /// The number.
    pub n: u64,
    /// The largest total allowed.
    pub limit: u64,
}

/// Records a measurement on an existing counter.
#[derive(Debug, Clone, Copy)]
pub struct Measure(pub f64);

impl Handle<Measure> for Counter {
    type Error = Refused;

    fn handle(&self, command: &Measure) -> Result<Vec<Tested>, Refused> {
        Ok(vec![Tested::Numbered(1), Tested::Measured(command.0)])
    }
}

/// Why the counter refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Zero adds nothing.
    #[error("zero adds nothing")]
    Zero,
    /// The total would pass the limit.
    #[error("the total would pass {0}")]
    OverLimit(u64),
}

impl Handle<Open> for Counter {
    type Error = Refused;
    const CREATES: bool = true;

    fn handle(&self, command: &Open) -> Result<Vec<Tested>, Refused> {
        Ok(vec![Tested::Numbered(command.0)])
    }
}

impl Handle<Add> for Counter {
    type Error = Refused;

    fn handle(&self, command: &Add) -> Result<Vec<Tested>, Refused> {
        match command.0 {
            0 => Err(Refused::Zero),
            n => Ok(vec![Tested::Numbered(n), Tested::Numbered(0)]),
        }
    }
}

impl Handle<AddUpTo> for Counter {
    type Error = Refused;

    fn handle(&self, command: &AddUpTo) -> Result<Vec<Tested>, Refused> {
        if self.total + command.n > command.limit {
            return Err(Refused::OverLimit(command.limit));
        }
        Ok(vec![Tested::Numbered(command.n)])
    }
}

/// The repositories a case runs on: without and with a cache.
fn repositories<S: EventStore>(store: &S) -> [(&'static str, Repository<Counter, S>); 2] {
    [
        ("uncached", Repository::new(store.clone())),
        ("cached", Repository::new(store.clone()).with_cache(16)),
    ]
}

fn context() -> CommandContext {
    CommandContext::new()
}

async fn stream_len<S: EventStore>(store: &S, stream: StreamKey<'_>) -> usize {
    store
        .read_stream(stream, 1, Until::End)
        .try_collect::<Vec<_>>()
        .await
        .expect("the stream reads")
        .len()
}

/// A command that does not start streams, on a stream that does not exist, is not found and
/// writes nothing; a load of a missing stream is not found; a creating command starts it.
pub async fn a_command_on_a_missing_stream_is_not_found<S: EventStore>(store: S) {
    for (name, counters) in repositories(&store) {
        let id = format!("missing-{name}");
        let missing = counters.execute(&id, &Add(1), &context()).await;
        assert!(
            matches!(&missing, Err(ExecuteError::NotFound { stream, .. }) if stream.id == id),
            "{name}: {missing:?}"
        );
        assert!(
            matches!(counters.load(&id).await, Err(LoadError::NotFound { .. })),
            "{name}"
        );
        assert_eq!(
            stream_len(&store, counters.stream(&id)).await,
            0,
            "{name}: nothing written"
        );
        let created = counters.execute(&id, &Open(3), &context()).await.unwrap();
        assert_eq!(created.version, 1);
        let added = counters.execute(&id, &Add(2), &context()).await.unwrap();
        assert_eq!((added.version, added.state.total), (3, 5), "{name}");
        let again = counters
            .create(&format!("{id}-2"), &Open(7), &context())
            .await
            .unwrap();
        assert_eq!(again.version, 1, "{name}");
    }
}

/// A command that expects a stream version is decided only on that version: on any other it
/// fails with a conflict naming both, without retries, and writes nothing.
pub async fn an_expected_version_is_checked_without_retries<S: EventStore>(store: S) {
    for (name, counters) in repositories(&store) {
        let id = format!("expected-{name}");
        counters.create(&id, &Open(1), &context()).await.unwrap();
        counters.execute(&id, &Add(1), &context()).await.unwrap();
        let stale = counters
            .execute(&id, &Add(5), &context().expecting_version(1))
            .await;
        match stale {
            Err(ExecuteError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (1, Some(3)), "{name}");
            }
            other => panic!("{name}: expected a conflict, got {other:?}"),
        }
        let current = counters
            .execute(&id, &Add(5), &context().expecting_version(3))
            .await
            .unwrap();
        assert_eq!((current.first_version, current.version), (4, 5), "{name}");
        let none = counters
            .create(
                &format!("{id}-new"),
                &Open(1),
                &context().expecting_version(0),
            )
            .await
            .unwrap();
        assert_eq!(none.version, 1);
        let exists = counters
            .create(
                &format!("{id}-new"),
                &Open(1),
                &context().expecting_version(0),
            )
            .await;
        assert!(
            matches!(
                exists,
                Err(ExecuteError::Conflict {
                    expected: 0,
                    actual: Some(1),
                    ..
                })
            ),
            "{name}: {exists:?}"
        );
        assert_eq!(stream_len(&store, counters.stream(&id)).await, 5, "{name}");
    }
}

/// An idempotent command (named by its context) executed again — right away, after the stream
/// moved on, or when deciding again would be refused — writes nothing and returns the first
/// execution's outcome; `create` the same. Other commands are not affected.
pub async fn an_idempotent_command_runs_once<S: EventStore>(store: S) {
    for (name, counters) in repositories(&store) {
        let id = format!("idempotent-{name}");
        let key = format!("key-{name}");
        let open = counters
            .create(
                &id,
                &Open(1),
                &context().with_command_id(format!("{key}-open")),
            )
            .await
            .unwrap();
        let open_again = counters
            .create(
                &id,
                &Open(1),
                &context().with_command_id(format!("{key}-open")),
            )
            .await
            .unwrap();
        assert!(open_again.repeated && !open.repeated, "{name}");
        assert_eq!(open_again.event_ids, open.event_ids, "{name}");
        assert_eq!(
            (open_again.version, open_again.last_position),
            (1, open.last_position)
        );
        let first = counters
            .execute(&id, &Add(4), &context().with_command_id(key.clone()))
            .await
            .unwrap();
        let again = counters
            .execute(&id, &Add(4), &context().with_command_id(key.clone()))
            .await
            .unwrap();
        assert!(again.repeated, "{name}");
        assert_eq!(
            (
                again.first_version,
                again.version,
                again.last_position,
                &again.event_ids
            ),
            (
                first.first_version,
                first.version,
                first.last_position,
                &first.event_ids
            ),
            "{name}"
        );
        assert_eq!(
            again.state, first.state,
            "{name}: the state right after the first execution"
        );
        // The stream moves on; the retry still finds its first execution.
        counters.execute(&id, &Add(10), &context()).await.unwrap();
        let later = counters
            .execute(&id, &Add(4), &context().with_command_id(key.clone()))
            .await
            .unwrap();
        assert!(later.repeated && later.version == first.version, "{name}");
        // Deciding again would be refused (the limit is reached): still the first outcome.
        let limited = AddUpTo { n: 5, limit: 20 };
        let within = counters
            .execute(
                &id,
                &limited,
                &context().with_command_id(format!("{key}-limited")),
            )
            .await
            .unwrap();
        let retried = counters
            .execute(
                &id,
                &limited,
                &context().with_command_id(format!("{key}-limited")),
            )
            .await
            .unwrap();
        assert!(
            retried.repeated && retried.version == within.version,
            "{name}"
        );
        let refused = counters.execute(&id, &limited, &context()).await;
        assert!(
            matches!(refused, Err(ExecuteError::Rejected(Refused::OverLimit(20)))),
            "{name}"
        );
        // With an expected version the caller saw before the first execution: its outcome.
        let expecting = counters
            .execute(
                &id,
                &Add(4),
                &context().with_command_id(key.clone()).expecting_version(1),
            )
            .await
            .unwrap();
        assert!(expecting.repeated, "{name}");
        let stored = stream_len(&store, counters.stream(&id)).await;
        assert_eq!(stored, 1 + 2 + 2 + 1, "{name}: every command wrote once");
        // The same key on another stream is another command.
        let other = counters
            .create(
                &format!("{id}-other"),
                &Open(1),
                &context().with_command_id(format!("{key}-open")),
            )
            .await
            .unwrap();
        assert!(!other.repeated, "{name}");
    }
}

/// Commands of one process on one stream queue instead of racing: 8 tasks × 100 commands on
/// one aggregate all succeed with default settings, without a single conflict.
pub async fn commands_on_a_hot_stream_queue<S: EventStore>(store: S) {
    for (name, counters) in repositories(&store) {
        let id = format!("hot-{name}");
        counters.create(&id, &Open(1), &context()).await.unwrap();
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let counters = counters.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                for n in 0..100u64 {
                    let executed = counters
                        .execute(&id, &Add(task * 1000 + n + 1), &context())
                        .await
                        .unwrap_or_else(|error| panic!("command {n} of task {task}: {error}"));
                    conflicts += executed.conflicts;
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for task in tasks {
            conflicts += task.await.expect("the task finished");
        }
        assert_eq!(conflicts, 0, "{name}: commands of one process never race");
        let loaded = counters.load(&id).await.unwrap();
        assert_eq!(loaded.version, 1 + 800 * 2, "{name}");
        assert_eq!(loaded.state.count, 1 + 800 * 2);
    }
}

/// Tenants keep their aggregates apart: the same id in two tenants is two streams, and a
/// tenant's repository sees only its own.
pub async fn tenants_keep_aggregates_apart<S: EventStore>(store: S) {
    let counters = Repository::<Counter, _>::new(store.clone())
        .with_cache(4)
        .per_tenant();
    let acme = Tenant::new("acme").unwrap();
    let globex = Tenant::new("globex").unwrap();
    counters
        .tenant(&acme)
        .create("42", &Open(1), &context())
        .await
        .unwrap();
    counters
        .tenant(&globex)
        .create("42", &Open(100), &context())
        .await
        .unwrap();
    counters
        .tenant(&acme)
        .execute("42", &Add(2), &context())
        .await
        .unwrap();
    assert_eq!(
        counters.tenant(&acme).load("42").await.unwrap().state.total,
        3
    );
    assert_eq!(
        counters
            .tenant(&globex)
            .load("42")
            .await
            .unwrap()
            .state
            .total,
        100
    );
    let default = Repository::<Counter, _>::new(store.clone());
    assert!(matches!(
        default.load("42").await,
        Err(LoadError::NotFound { .. })
    ));
    let acme_log = store
        .read_all(LogScope::Tenant("acme"), crate::Position::START, 100)
        .await
        .unwrap();
    assert_eq!(acme_log.len(), 3);
    assert!(
        acme_log
            .iter()
            .all(|e| e.tenant == "acme" && e.stream_type == "counter")
    );
}

/// Snapshots are taken at the interval (the aggregate's, or one set at run time), saved in the
/// background, awaited by a flush, and a load says it started from one and at which version.
pub async fn snapshots_are_flushed_and_reported<S: EventStore>(store: S) {
    let counters = Repository::<Counter, _>::new(store.clone());
    counters.create("snap", &Open(1), &context()).await.unwrap();
    for n in 0..5 {
        counters
            .execute("snap", &Add(n + 1), &context())
            .await
            .unwrap();
    }
    counters.flush_snapshots().await;
    let loaded = counters.load("snap").await.unwrap();
    assert_eq!(loaded.version, 11);
    assert_eq!(
        loaded.started_from,
        StartedFrom::Snapshot(11),
        "taken after the command that crossed version 10"
    );
    let every_three = Repository::<Counter, _>::new(store.clone()).with_snapshot_interval(Some(3));
    every_three
        .create("three", &Open(1), &context())
        .await
        .unwrap();
    every_three
        .execute("three", &Add(1), &context())
        .await
        .unwrap();
    every_three.flush_snapshots().await;
    assert_eq!(
        every_three.load("three").await.unwrap().started_from,
        StartedFrom::Snapshot(3)
    );
    let none = Repository::<Counter, _>::new(store.clone()).with_snapshot_interval(None);
    none.create("none", &Open(1), &context()).await.unwrap();
    for n in 0..6 {
        none.execute("none", &Add(n + 1), &context()).await.unwrap();
    }
    none.flush_snapshots().await;
    assert_eq!(
        none.load("none").await.unwrap().started_from,
        StartedFrom::Empty
    );
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(2);
    cached.load("snap").await.unwrap();
    assert_eq!(
        cached.load("snap").await.unwrap().started_from,
        StartedFrom::Cache(11)
    );
    let ids: HashSet<_> = store
        .read_all(LogScope::AllTenants, crate::Position::START, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids.len(), 11 + 3 + 13);
}

/// A value no reader could load back (NaN, an infinity: JSON has neither, and serde_json would
/// store `null`) is refused as a typed encode error before anything is written.
pub async fn a_value_no_reader_can_load_is_refused_before_anything_is_written<S: EventStore>(
    store: S,
) {
    for (name, counters) in repositories(&store) {
        let id = format!("measured-{name}");
        counters.create(&id, &Open(1), &context()).await.unwrap();
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let refused = counters.execute(&id, &Measure(value), &context()).await;
            match refused {
                Err(ExecuteError::Encode {
                    event_type: "Measured",
                    source: crate::EncodeError::NonFiniteFloat { pointer, .. },
                    ..
                }) => assert_eq!(pointer, "/value", "{name}"),
                other => panic!("{name}: expected a typed encode error for {value}, got {other:?}"),
            }
        }
        assert_eq!(
            stream_len(&store, counters.stream(&id)).await,
            1,
            "{name}: nothing written"
        );
        let measured = counters
            .execute(&id, &Measure(21.5), &context())
            .await
            .unwrap();
        assert_eq!(measured.version, 3, "{name}");
        let stored = store
            .read_stream(counters.stream(&id), 3, Until::End)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert_eq!(
            stored[0].decode::<Tested>().unwrap(),
            Tested::Measured(21.5)
        );
    }
}

/// Generates one `#[tokio::test]` per repository conformance case; `$make` is an async
/// expression yielding a fresh, empty store, evaluated once per case.
#[macro_export]
macro_rules! repository_conformance_tests {
    ($make:expr) => {
        $crate::repository_conformance_tests!(@cases $make;
            a_command_on_a_missing_stream_is_not_found,
            an_expected_version_is_checked_without_retries,
            an_idempotent_command_runs_once,
            commands_on_a_hot_stream_queue,
            tenants_keep_aggregates_apart,
            snapshots_are_flushed_and_reported,
            a_value_no_reader_can_load_is_refused_before_anything_is_written);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::repository::$case(store).await;
            }
        )*
    };
}
