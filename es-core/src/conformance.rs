//! The conformance suites: the behaviour every store must have, written once.
//!
//! A store's test file runs every case of the event-store suite against fresh stores with one
//! macro call, and every case of the projection suite ([`projection`]) with another:
//!
//! ```ignore
//! es_core::store_conformance_tests!(async { es_core::MemoryStore::new() });
//! es_core::projection_conformance_tests!(es_core::conformance::projection::MemoryHarness::default());
//! ```
//!
//! A store with an inbox runs the inbox suite ([`inbox`]) too:
//! `es_core::inbox_conformance_tests!(async { es_core::MemoryStore::new() });`.
//!
//! The expression is evaluated anew for each case, so each case gets an empty store. The
//! calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.

pub mod consumer;
pub mod inbox;
pub mod projection;
pub mod repository;
pub mod sql;

use std::collections::{BTreeSet, HashSet};

use chrono::Utc;
use futures_util::TryStreamExt;
use uuid::Uuid;

use crate::contract::{Field, InputRule};
use crate::envelope::{Metadata, NewEvent, Position, RecordedEvent};
use crate::json::RawJson;
use crate::store::{AppendOutcome, EventStore, ExpectedVersion, Snapshot, StoreError, Until};
use crate::stream::{LogScope, StreamKey};

const STREAM_TYPE: &str = "conformance";

/// Stream `id` of the suite's stream type, in the default tenant.
fn key(id: &str) -> StreamKey<'_> {
    StreamKey::new(STREAM_TYPE, id)
}

/// A test event with a fresh id, type `Tested`, version 1 and payload `{"n": n}`.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Tested".to_owned(),
        schema_version: 1,
        payload: RawJson::from(serde_json::json!({ "n": n })),
        metadata: RawJson::encode(&Metadata {
            correlation_id: Some(Uuid::new_v4().to_string()),
            source: Some("conformance".to_owned()),
            ..Metadata::default()
        })
        .expect("metadata serializes"),
    }
}

/// `count` test events numbered from `first`.
pub fn events(first: u64, count: u64) -> Vec<NewEvent> {
    (first..first + count).map(event).collect()
}

async fn append<S: EventStore>(
    store: &S,
    stream: &str,
    expected: ExpectedVersion,
    batch: Vec<NewEvent>,
) -> AppendOutcome {
    append_to(store, key(stream), expected, batch).await
}

async fn append_to<S: EventStore>(
    store: &S,
    stream: StreamKey<'_>,
    expected: ExpectedVersion,
    batch: Vec<NewEvent>,
) -> AppendOutcome {
    store
        .append(stream, expected, batch)
        .await
        .unwrap_or_else(|error| panic!("append to `{stream}` expecting {expected} failed: {error}"))
}

async fn read<S: EventStore>(
    store: &S,
    stream: &str,
    from: u64,
    until: Until,
) -> Vec<RecordedEvent> {
    read_key(store, key(stream), from, until).await
}

async fn read_key<S: EventStore>(
    store: &S,
    stream: StreamKey<'_>,
    from: u64,
    until: Until,
) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, from, until)
        .try_collect()
        .await
        .unwrap_or_else(|error| panic!("reading `{stream}` failed: {error}"))
}

async fn read_whole_log<S: EventStore>(store: &S, page: usize) -> Vec<RecordedEvent> {
    read_log(store, LogScope::AllTenants, page).await
}

async fn read_log<S: EventStore>(
    store: &S,
    scope: LogScope<'_>,
    page: usize,
) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = store
            .read_all(scope, after, page)
            .await
            .expect("read_all works");
        assert!(batch.len() <= page, "read_all returned more than its limit");
        let Some(last) = batch.last() else { return all };
        after = last.position;
        all.extend(batch);
    }
}

fn payload_n(event: &RecordedEvent) -> u64 {
    event.payload.to_value().expect("payload is JSON")["n"]
        .as_u64()
        .expect("payload has n")
}

fn assert_conflict(
    result: Result<AppendOutcome, StoreError>,
    expected: ExpectedVersion,
    actual: Option<u64>,
) {
    match result {
        Err(StoreError::Conflict {
            expected: e,
            actual: a,
            ..
        }) => assert_eq!(
            (e, a),
            (expected, actual),
            "conflict reports expected and actual"
        ),
        other => {
            panic!("expected a conflict expecting {expected} with actual {actual:?}, got {other:?}")
        }
    }
}

/// Versions start at 1 and every envelope field round-trips.
pub async fn append_and_read_back<S: EventStore>(store: S) {
    let before = Utc::now() - chrono::Duration::seconds(5);
    let batch = events(1, 3);
    let sent = batch.clone();
    let outcome = append(&store, "s-1", ExpectedVersion::NoStream, batch).await;
    let AppendOutcome::Appended(range) = outcome else {
        panic!("a new batch is appended, got {outcome:?}")
    };
    assert_eq!((range.first_version, range.last_version), (1, 3));
    let stored = read(&store, "s-1", 1, Until::End).await;
    assert_eq!(stored.len(), 3);
    for (i, (recorded, sent)) in stored.iter().zip(&sent).enumerate() {
        assert_eq!(recorded.tenant, crate::DEFAULT_TENANT);
        assert_eq!(recorded.stream_type, STREAM_TYPE);
        assert_eq!(recorded.stream_id, "s-1");
        assert_eq!(recorded.stream_version, i as u64 + 1);
        assert_eq!(recorded.event_id, sent.event_id);
        assert_eq!(recorded.event_type, sent.event_type);
        assert_eq!(recorded.schema_version, sent.schema_version);
        assert_eq!(
            recorded.payload.to_value().unwrap(),
            sent.payload.to_value().unwrap()
        );
        assert_eq!(
            recorded.metadata().unwrap(),
            sent.metadata.decode::<Metadata>().unwrap()
        );
        assert!(
            recorded.recorded_at >= before
                && recorded.recorded_at <= Utc::now() + chrono::Duration::seconds(5)
        );
    }
    assert_eq!(stored.last().unwrap().position, range.last_position);
    assert_eq!(store.stream_version(key("s-1")).await.unwrap(), Some(3));
    assert_eq!(store.stream_version(key("missing")).await.unwrap(), None);
    assert!(read(&store, "missing", 1, Until::End).await.is_empty());
}

/// `ExpectedVersion::Any` appends whatever the stream's state.
pub async fn expected_any<S: EventStore>(store: S) {
    append(&store, "s", ExpectedVersion::Any, events(1, 1)).await;
    let range = append(&store, "s", ExpectedVersion::Any, events(2, 2))
        .await
        .range();
    assert_eq!((range.first_version, range.last_version), (2, 3));
}

/// `NoStream` appends only to a stream that does not exist.
pub async fn expected_no_stream<S: EventStore>(store: S) {
    append(&store, "s", ExpectedVersion::NoStream, events(1, 2)).await;
    let again = store
        .append(key("s"), ExpectedVersion::NoStream, events(3, 1))
        .await;
    assert_conflict(again, ExpectedVersion::NoStream, Some(2));
    append(&store, "t", ExpectedVersion::Exact(0), events(1, 1)).await;
}

/// `StreamExists` appends only to a stream that has events.
pub async fn expected_stream_exists<S: EventStore>(store: S) {
    let missing = store
        .append(key("s"), ExpectedVersion::StreamExists, events(1, 1))
        .await;
    assert_conflict(missing, ExpectedVersion::StreamExists, None);
    append(&store, "s", ExpectedVersion::NoStream, events(1, 1)).await;
    let range = append(&store, "s", ExpectedVersion::StreamExists, events(2, 1))
        .await
        .range();
    assert_eq!(range.last_version, 2);
}

/// `Exact(n)` appends only when the stream's last version is n, and reports the actual one.
pub async fn expected_exact<S: EventStore>(store: S) {
    let missing = store
        .append(key("s"), ExpectedVersion::Exact(3), events(1, 1))
        .await;
    assert_conflict(missing, ExpectedVersion::Exact(3), None);
    append(&store, "s", ExpectedVersion::Exact(0), events(1, 2)).await;
    append(&store, "s", ExpectedVersion::Exact(2), events(3, 1)).await;
    let stale = store
        .append(key("s"), ExpectedVersion::Exact(2), events(4, 1))
        .await;
    assert_conflict(stale, ExpectedVersion::Exact(2), Some(3));
    let ahead = store
        .append(key("s"), ExpectedVersion::Exact(9), events(4, 1))
        .await;
    assert_conflict(ahead, ExpectedVersion::Exact(9), Some(3));
    assert_eq!(
        read(&store, "s", 1, Until::End).await.len(),
        3,
        "failed appends wrote nothing"
    );
}

/// Re-sending a written batch reports it as already appended and writes nothing (idempotent
/// append).
pub async fn idempotent_resend<S: EventStore>(store: S) {
    let batch = events(1, 3);
    let first = append(&store, "s", ExpectedVersion::NoStream, batch.clone()).await;
    // The reply was lost: the client sends the same batch with the same expectation again.
    let again = append(&store, "s", ExpectedVersion::NoStream, batch.clone()).await;
    assert_eq!(again, AppendOutcome::AlreadyAppended(first.range()));
    let again_any = append(&store, "s", ExpectedVersion::Any, batch.clone()).await;
    assert_eq!(again_any, AppendOutcome::AlreadyAppended(first.range()));
    // Re-sent after the stream moved on: still the same batch, not a conflict.
    let second_batch = events(4, 2);
    let second = append(&store, "s", ExpectedVersion::Exact(3), second_batch.clone()).await;
    append(&store, "s", ExpectedVersion::Exact(5), events(6, 1)).await;
    let again_exact = append(&store, "s", ExpectedVersion::Exact(3), second_batch).await;
    assert_eq!(again_exact, AppendOutcome::AlreadyAppended(second.range()));
    let again_first = append(&store, "s", ExpectedVersion::NoStream, batch).await;
    assert_eq!(again_first, AppendOutcome::AlreadyAppended(first.range()));
    assert_eq!(read(&store, "s", 1, Until::End).await.len(), 6);
    assert_eq!(read_whole_log(&store, 100).await.len(), 6);
}

/// An id already used by another event is an error, whatever stream or batch it comes in.
pub async fn reused_event_id_is_rejected<S: EventStore>(store: S) {
    let batch = events(1, 2);
    append(&store, "s", ExpectedVersion::NoStream, batch.clone()).await;
    let other_stream = store
        .append(key("t"), ExpectedVersion::Any, vec![batch[0].clone()])
        .await;
    assert!(
        matches!(&other_stream, Err(StoreError::DuplicateEventId { event_id, existing_stream, existing_version: 1 })
            if *event_id == batch[0].event_id && existing_stream.as_key() == key("s")),
        "reuse in another stream: {other_stream:?}"
    );
    let mixed = vec![event(9), batch[1].clone()];
    let partial = store.append(key("s"), ExpectedVersion::Any, mixed).await;
    assert!(
        matches!(partial, Err(StoreError::DuplicateEventId { .. })),
        "partly re-sent batch: {partial:?}"
    );
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    let reordered = store
        .append(key("s"), ExpectedVersion::Any, reordered)
        .await;
    assert!(
        matches!(reordered, Err(StoreError::DuplicateEventId { .. })),
        "reordered batch: {reordered:?}"
    );
    let tail = store
        .append(key("s"), ExpectedVersion::Any, vec![batch[1].clone()])
        .await;
    assert!(
        matches!(tail, Err(StoreError::DuplicateEventId { .. })),
        "the tail of a batch: {tail:?}"
    );
    let first_only = store
        .append(key("s"), ExpectedVersion::Any, vec![batch[0].clone()])
        .await;
    assert!(
        matches!(first_only, Err(StoreError::DuplicateEventId { .. })),
        "part of a batch: {first_only:?}"
    );
    assert_eq!(
        read_whole_log(&store, 100).await.len(),
        2,
        "nothing was written"
    );
}

/// Empty batches and an id repeated within a batch are invalid and write nothing.
pub async fn invalid_batches<S: EventStore>(store: S) {
    let empty = store
        .append(key("s"), ExpectedVersion::Any, Vec::new())
        .await;
    assert!(
        matches!(empty, Err(StoreError::InvalidInput { .. })),
        "empty batch: {empty:?}"
    );
    let one = event(1);
    let twice = store
        .append(key("s"), ExpectedVersion::Any, vec![one.clone(), one])
        .await;
    assert!(
        matches!(twice, Err(StoreError::InvalidInput { .. })),
        "repeated id: {twice:?}"
    );
    assert_eq!(store.stream_version(key("s")).await.unwrap(), None);
}

/// Stream reads start at a version and stop at a version or a time (time travel).
pub async fn read_ranges<S: EventStore>(store: S) {
    append(&store, "s", ExpectedVersion::NoStream, events(1, 5)).await;
    let from_three: Vec<u64> = read(&store, "s", 3, Until::End)
        .await
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(from_three, [3, 4, 5]);
    let to_two: Vec<u64> = read(&store, "s", 1, Until::Version(2))
        .await
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(to_two, [1, 2]);
    assert!(read(&store, "s", 6, Until::End).await.is_empty());
    let cut = read(&store, "s", 1, Until::End).await[4].recorded_at;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    append(&store, "s", ExpectedVersion::Exact(5), events(6, 2)).await;
    let until_cut = read(&store, "s", 1, Until::RecordedAt(cut)).await;
    assert_eq!(
        until_cut.len(),
        5,
        "events recorded after the time are excluded"
    );
    assert!(
        read(
            &store,
            "s",
            1,
            Until::RecordedAt(cut - chrono::Duration::days(1))
        )
        .await
        .is_empty()
    );
}

/// A long stream reads completely and in order through the stream interface, without holding
/// it all in memory.
pub async fn long_stream<S: EventStore>(store: S) {
    for chunk in 0..10 {
        append(
            &store,
            "long",
            ExpectedVersion::Any,
            events(chunk * 300 + 1, 300),
        )
        .await;
    }
    let mut stream = store.read_stream(key("long"), 1, Until::End);
    let mut expected = 1;
    while let Some(event) = stream.try_next().await.expect("stream reads") {
        assert_eq!(event.stream_version, expected);
        assert_eq!(payload_n(&event), expected);
        expected += 1;
    }
    assert_eq!(expected, 3001);
}

/// Why a conformance replay stopped.
#[derive(Debug)]
enum ReplayStop {
    Store(StoreError),
    Visitor,
}

impl From<StoreError> for ReplayStop {
    fn from(error: StoreError) -> Self {
        ReplayStop::Store(error)
    }
}

/// An owned copy of a replayed event: (version, event type, schema version, payload).
type Replayed = (u64, String, u32, String);

async fn replay<S: EventStore>(store: &S, stream: &str, from: u64, until: Until) -> Vec<Replayed> {
    let mut replayed = Vec::new();
    let count = match store
        .replay_stream(
            key(stream),
            from,
            until,
            |event| -> Result<(), ReplayStop> {
                replayed.push((
                    event.stream_version,
                    event.event_type.to_owned(),
                    event.schema_version,
                    event.payload.to_owned(),
                ));
                Ok(())
            },
        )
        .await
    {
        Ok(count) => count,
        Err(ReplayStop::Store(error)) => panic!("replaying `{stream}` failed: {error}"),
        Err(ReplayStop::Visitor) => unreachable!("this visitor never fails"),
    };
    assert_eq!(
        count,
        replayed.len() as u64,
        "the replay counts what it passed"
    );
    replayed
}

fn as_replayed(events: Vec<RecordedEvent>) -> Vec<Replayed> {
    events
        .into_iter()
        .map(|e| {
            (
                e.stream_version,
                e.event_type,
                e.schema_version,
                e.payload.as_str().to_owned(),
            )
        })
        .collect()
}

/// A replay passes exactly what a stream read yields (across pages, from a version, up to a
/// version or a time), only its stream's events, and stops at the visitor's first error.
pub async fn replay_matches_read<S: EventStore>(store: S) {
    for chunk in 0..4 {
        append(
            &store,
            "r",
            ExpectedVersion::Any,
            events(chunk * 300 + 1, 300),
        )
        .await;
        append(&store, "other", ExpectedVersion::Any, events(1, 3)).await;
    }
    let all = replay(&store, "r", 1, Until::End).await;
    assert_eq!(all.len(), 1200);
    assert_eq!(all, as_replayed(read(&store, "r", 1, Until::End).await));
    assert_eq!(
        replay(&store, "r", 3, Until::Version(5)).await,
        as_replayed(read(&store, "r", 3, Until::Version(5)).await)
    );
    assert_eq!(
        replay(&store, "r", 3, Until::Version(5))
            .await
            .iter()
            .map(|e| e.0)
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let cut = read(&store, "r", 1200, Until::End).await[0].recorded_at;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    append(&store, "r", ExpectedVersion::Exact(1200), events(1201, 2)).await;
    assert_eq!(replay(&store, "r", 1, Until::RecordedAt(cut)).await, all);
    assert_eq!(replay(&store, "r", 1, Until::End).await.len(), 1202);
    assert!(replay(&store, "missing", 1, Until::End).await.is_empty());
    assert!(replay(&store, "r", 1203, Until::End).await.is_empty());

    let mut visited = 0;
    let stopped = store
        .replay_stream(key("r"), 1, Until::End, |_| {
            visited += 1;
            if visited == 3 {
                Err(ReplayStop::Visitor)
            } else {
                Ok(())
            }
        })
        .await;
    assert!(
        matches!(stopped, Err(ReplayStop::Visitor)),
        "the visitor's error ends the replay: {stopped:?}"
    );
    assert_eq!(visited, 3, "nothing is passed after the visitor's error");
}

/// The global log is read in order, in pages, with strictly increasing positions.
pub async fn global_log_order<S: EventStore>(store: S) {
    append(&store, "a", ExpectedVersion::Any, events(1, 2)).await;
    append(&store, "b", ExpectedVersion::Any, events(3, 3)).await;
    append(&store, "a", ExpectedVersion::Any, events(6, 1)).await;
    for page in [1, 2, 4, 100] {
        let log = read_whole_log(&store, page).await;
        let numbers: Vec<u64> = log.iter().map(payload_n).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6], "page size {page}");
        assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    }
    let all = store
        .read_all(LogScope::AllTenants, Position::START, 100)
        .await
        .unwrap();
    let after_third = store
        .read_all(LogScope::AllTenants, all[2].position, 100)
        .await
        .unwrap();
    assert_eq!(
        after_third.iter().map(payload_n).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert!(
        store
            .read_all(LogScope::AllTenants, all[5].position, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Snapshots save, load and replace per stream.
pub async fn snapshots<S: EventStore>(store: S) {
    assert_eq!(store.load_snapshot(key("s")).await.unwrap(), None);
    let mut snapshot = Snapshot {
        tenant: crate::DEFAULT_TENANT.to_owned(),
        stream_type: STREAM_TYPE.to_owned(),
        stream_id: "s".to_owned(),
        stream_version: 10,
        state_version: 1,
        state: RawJson::from(serde_json::json!({ "total": 10 })),
        taken_at: Utc::now(),
    };
    store.save_snapshot(&snapshot).await.unwrap();
    let loaded = store
        .load_snapshot(key("s"))
        .await
        .unwrap()
        .expect("saved snapshot loads");
    assert_eq!((loaded.stream_version, loaded.state_version), (10, 1));
    assert_eq!(
        loaded.state.to_value().unwrap(),
        serde_json::json!({ "total": 10 })
    );
    snapshot.stream_version = 20;
    snapshot.state_version = 2;
    snapshot.state = RawJson::from(serde_json::json!({ "total": 20 }));
    store.save_snapshot(&snapshot).await.unwrap();
    let replaced = store.load_snapshot(key("s")).await.unwrap().unwrap();
    assert_eq!((replaced.stream_version, replaced.state_version), (20, 2));
    assert_eq!(store.load_snapshot(key("t")).await.unwrap(), None);
}

/// Of two snapshots of a stream, the newer stays whichever is saved last (two saves may race);
/// one at the same version replaces the saved one.
pub async fn an_older_snapshot_does_not_replace_a_newer_one<S: EventStore>(store: S) {
    let at = |stream_version: u64, state_version: u32| Snapshot {
        tenant: crate::DEFAULT_TENANT.to_owned(),
        stream_type: STREAM_TYPE.to_owned(),
        stream_id: "s".to_owned(),
        stream_version,
        state_version,
        state: RawJson::from(serde_json::json!({ "total": stream_version })),
        taken_at: Utc::now(),
    };
    let saved = async || {
        let snapshot = store
            .load_snapshot(key("s"))
            .await
            .unwrap()
            .expect("a snapshot");
        (snapshot.stream_version, snapshot.state_version)
    };
    store.save_snapshot(&at(200, 1)).await.unwrap();
    store.save_snapshot(&at(100, 1)).await.unwrap();
    assert_eq!(saved().await, (200, 1), "the older snapshot was not saved");
    assert_eq!(
        store
            .load_snapshot(key("s"))
            .await
            .unwrap()
            .unwrap()
            .state
            .to_value()
            .unwrap(),
        serde_json::json!({ "total": 200 })
    );
    store.save_snapshot(&at(200, 2)).await.unwrap();
    assert_eq!(saved().await, (200, 2), "the same version replaces");
    store.save_snapshot(&at(300, 2)).await.unwrap();
    assert_eq!(saved().await, (300, 2), "a newer version replaces");
}

/// Stream ids are stored verbatim, whatever characters they hold.
pub async fn stream_ids_verbatim<S: EventStore>(store: S) {
    let long = "x".repeat(1000);
    let ids = [
        "o'brien",
        "a\"b",
        "x; DROP TABLE events; --",
        "日本語-ストリーム-🦀",
        "back\\slash",
        "%_wild*card",
        long.as_str(),
    ];
    for id in ids {
        append(&store, id, ExpectedVersion::NoStream, events(1, 1)).await;
        let stored = read(&store, id, 1, Until::End).await;
        assert_eq!(stored.len(), 1, "stream {id:?}");
        assert_eq!(stored[0].stream_id, id);
        assert_eq!(store.stream_version(key(id)).await.unwrap(), Some(1));
    }
    let log = read_whole_log(&store, 100).await;
    let stored: BTreeSet<&str> = log.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(stored, ids.into_iter().collect());
}

/// Many tasks appending to one stream with exact expectations: each version is won once.
pub async fn concurrent_appends_one_stream<S: EventStore>(store: S) {
    const TASKS: u64 = 8;
    const APPENDS: u64 = 25;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            let mut written = 0;
            while written < APPENDS {
                let current = store.stream_version(key("hot")).await.unwrap();
                let expected = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                match store
                    .append(key("hot"), expected, vec![event(task * 1000 + written)])
                    .await
                {
                    Ok(_) => written += 1,
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(error) => panic!("unexpected error: {error}"),
                }
            }
            conflicts
        }));
    }
    for handle in handles {
        handle.await.expect("task finished");
    }
    let stored = read(&store, "hot", 1, Until::End).await;
    assert_eq!(stored.len() as u64, TASKS * APPENDS);
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=TASKS * APPENDS).collect::<Vec<_>>());
    let distinct: HashSet<u64> = stored.iter().map(payload_n).collect();
    assert_eq!(
        distinct.len() as u64,
        TASKS * APPENDS,
        "no event lost or duplicated"
    );
}

/// Many tasks appending to their own streams: the global log holds every event exactly once.
pub async fn concurrent_appends_many_streams<S: EventStore>(store: S) {
    const TASKS: u64 = 8;
    const APPENDS: u64 = 20;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..APPENDS {
                let stream = format!("task-{task}");
                append(
                    &store,
                    &stream,
                    ExpectedVersion::Any,
                    events(task * 1000 + n * 2, 2),
                )
                .await;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task finished");
    }
    let log = read_whole_log(&store, 37).await;
    assert_eq!(log.len() as u64, TASKS * APPENDS * 2);
    let ids: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), log.len(), "no event appears twice in the log");
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    for task in 0..TASKS {
        let stream = read(&store, &format!("task-{task}"), 1, Until::End).await;
        let numbers: Vec<u64> = stream.iter().map(payload_n).collect();
        let expected: Vec<u64> = (0..APPENDS * 2).map(|i| task * 1000 + i).collect();
        assert_eq!(numbers, expected, "stream of task {task} keeps its order");
    }
}

/// An id names one stream per stream type and per tenant: the same id under two stream types, or
/// under two tenants, is two independent streams, each with its own versions, expectations and
/// reads; records carry all three parts of their key.
pub async fn streams_are_keyed_by_tenant_type_and_id<S: EventStore>(store: S) {
    let order = StreamKey::new("order", "42");
    let product = StreamKey::new("product", "42");
    let acme_order = order.in_tenant("acme");
    append_to(&store, order, ExpectedVersion::NoStream, events(1, 2)).await;
    append_to(&store, product, ExpectedVersion::NoStream, events(10, 1)).await;
    append_to(&store, acme_order, ExpectedVersion::NoStream, events(20, 3)).await;
    for (stream, expected) in [
        (order, vec![1, 2]),
        (product, vec![10]),
        (acme_order, vec![20, 21, 22]),
    ] {
        let stored = read_key(&store, stream, 1, Until::End).await;
        assert_eq!(
            stored.iter().map(payload_n).collect::<Vec<_>>(),
            expected,
            "stream {stream}"
        );
        assert!(
            stored.iter().all(|e| e.stream() == stream),
            "records name their stream {stream}"
        );
        assert_eq!(
            store.stream_version(stream).await.unwrap(),
            Some(expected.len() as u64),
            "version of {stream}"
        );
        let mut replayed = 0;
        store
            .replay_stream(stream, 1, Until::End, |_| {
                replayed += 1;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(replayed, expected.len(), "replay of {stream}");
    }
    let stale = store
        .append(order, ExpectedVersion::Exact(1), events(3, 1))
        .await;
    match stale {
        Err(StoreError::Conflict { stream, actual, .. }) => {
            assert_eq!((stream.as_key(), actual), (order, Some(2)));
        }
        other => panic!("expected a conflict on {order}, got {other:?}"),
    }
    append_to(&store, product, ExpectedVersion::Exact(1), events(11, 1)).await;
    assert_eq!(store.stream_version(order).await.unwrap(), Some(2));
    assert_eq!(
        store
            .stream_version(StreamKey::new("product", "42").in_tenant("acme"))
            .await
            .unwrap(),
        None
    );
    // Event ids are unique across tenants and types.
    let reused = read_key(&store, order, 1, Until::Version(1)).await[0].event_id;
    let mut again = event(99);
    again.event_id = reused;
    let duplicate = store
        .append(acme_order, ExpectedVersion::Any, vec![again])
        .await;
    assert!(
        matches!(&duplicate, Err(StoreError::DuplicateEventId { existing_stream, .. }) if existing_stream.as_key() == order),
        "an id of another tenant's stream: {duplicate:?}"
    );
}

/// Snapshots are kept per stream: the same id under another stream type or tenant has its own.
pub async fn snapshots_are_kept_apart<S: EventStore>(store: S) {
    let snapshot = |stream: StreamKey<'_>, version: u64| Snapshot {
        tenant: stream.tenant.to_owned(),
        stream_type: stream.stream_type.to_owned(),
        stream_id: stream.id.to_owned(),
        stream_version: version,
        state_version: 1,
        state: RawJson::from(serde_json::json!({ "version": version })),
        taken_at: Utc::now(),
    };
    let order = StreamKey::new("order", "42");
    let product = StreamKey::new("product", "42");
    let acme_order = order.in_tenant("acme");
    store.save_snapshot(&snapshot(order, 10)).await.unwrap();
    assert_eq!(store.load_snapshot(product).await.unwrap(), None);
    assert_eq!(store.load_snapshot(acme_order).await.unwrap(), None);
    store.save_snapshot(&snapshot(product, 20)).await.unwrap();
    store.save_snapshot(&snapshot(acme_order, 5)).await.unwrap();
    for (stream, version) in [(order, 10), (product, 20), (acme_order, 5)] {
        let loaded = store
            .load_snapshot(stream)
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(loaded.stream(), stream);
        assert_eq!(loaded.stream_version, version, "snapshot of {stream}");
    }
}

/// The global log of one tenant holds that tenant's events only, in log order, paged without
/// skipping; the log of all tenants holds everything.
pub async fn read_all_by_tenant<S: EventStore>(store: S) {
    for round in 0..3 {
        for tenant in ["acme", "globex", crate::DEFAULT_TENANT] {
            let stream = StreamKey::new(STREAM_TYPE, "s").in_tenant(tenant);
            append_to(&store, stream, ExpectedVersion::Any, events(round * 10, 2)).await;
        }
    }
    let all = read_log(&store, LogScope::AllTenants, 4).await;
    assert_eq!(all.len(), 18);
    for tenant in ["acme", "globex", crate::DEFAULT_TENANT] {
        for page in [1, 3, 100] {
            let only = read_log(&store, LogScope::Tenant(tenant), page).await;
            let expected: Vec<Uuid> = all
                .iter()
                .filter(|e| e.tenant == tenant)
                .map(|e| e.event_id)
                .collect();
            assert_eq!(
                only.iter().map(|e| e.event_id).collect::<Vec<_>>(),
                expected,
                "tenant {tenant}, page size {page}"
            );
            assert!(only.iter().all(|e| e.tenant == tenant));
        }
    }
    assert!(
        read_log(&store, LogScope::Tenant("nobody"), 10)
            .await
            .is_empty()
    );
    let after_first_acme = all.iter().find(|e| e.tenant == "acme").unwrap().position;
    let rest = store
        .read_all(LogScope::Tenant("acme"), after_first_acme, 100)
        .await
        .unwrap();
    assert_eq!(
        rest.len(),
        5,
        "continuing after a position skips nothing of the tenant"
    );
}

/// An event is found by its id, with its whole envelope, in every tenant's scope and its own, not
/// in another tenant's; an unknown id finds nothing.
pub async fn events_are_found_by_id<S: EventStore>(store: S) {
    let stream = StreamKey::new(STREAM_TYPE, "s").in_tenant("acme");
    append_to(&store, stream, ExpectedVersion::NoStream, events(1, 3)).await;
    let stored = read_key(&store, stream, 1, Until::End).await;
    for event in &stored {
        for scope in [LogScope::AllTenants, LogScope::Tenant("acme")] {
            let found = store.find_event(scope, event.event_id).await.unwrap();
            assert_eq!(found.as_ref(), Some(event), "found in {scope}");
        }
        let elsewhere = store
            .find_event(LogScope::Tenant("globex"), event.event_id)
            .await
            .unwrap();
        assert_eq!(elsewhere, None, "another tenant does not find it");
    }
    assert_eq!(
        store
            .find_event(LogScope::AllTenants, Uuid::new_v4())
            .await
            .unwrap(),
        None
    );
}

fn broken_rule(result: Result<AppendOutcome, StoreError>, what: &str) -> (InputRule, String) {
    match result {
        Err(error @ StoreError::InvalidInput { .. }) => {
            let message = error.to_string();
            let StoreError::InvalidInput { rule, .. } = error else {
                unreachable!()
            };
            (rule, message)
        }
        other => panic!("{what}: expected an invalid input, got {other:?}"),
    }
}

/// Every store refuses the same input with the same rule, writes nothing, and never quotes a
/// long value whole: see [`crate::contract`].
pub async fn input_contract<S: EventStore>(store: S) {
    let long_id = "x".repeat(10_000);
    let max_id = "y".repeat(crate::contract::MAX_STREAM_ID_BYTES);
    let with = |edit: &dyn Fn(&mut NewEvent)| {
        let mut event = event(1);
        edit(&mut event);
        event
    };
    let keys: [(StreamKey<'_>, InputRule); 6] = [
        (
            key(""),
            InputRule::Empty {
                field: Field::StreamId,
            },
        ),
        (
            key("a\0b"),
            InputRule::NulCharacter {
                field: Field::StreamId,
            },
        ),
        (
            key(&long_id),
            InputRule::TooLong {
                field: Field::StreamId,
                bytes: 10_000,
                max: crate::contract::MAX_STREAM_ID_BYTES,
            },
        ),
        (
            StreamKey::new("", "s"),
            InputRule::Empty {
                field: Field::StreamType,
            },
        ),
        (
            StreamKey::new("t\0", "s"),
            InputRule::NulCharacter {
                field: Field::StreamType,
            },
        ),
        (
            key("s").in_tenant(""),
            InputRule::Empty {
                field: Field::Tenant,
            },
        ),
    ];
    for (stream, expected) in keys {
        let (rule, message) = broken_rule(
            store
                .append(stream, ExpectedVersion::Any, events(1, 1))
                .await,
            &format!("append to {stream}"),
        );
        assert_eq!(rule, expected, "append to {stream}");
        assert!(
            message.len() < 400,
            "the message quotes the whole value: {message}"
        );
        let read: Result<Vec<RecordedEvent>, StoreError> =
            store.read_stream(stream, 1, Until::End).try_collect().await;
        assert!(
            matches!(read, Err(StoreError::InvalidInput { .. })),
            "reading {stream}: {read:?}"
        );
        assert!(
            matches!(
                store.load_snapshot(stream).await,
                Err(StoreError::InvalidInput { .. })
            ),
            "loading the snapshot of {stream}"
        );
    }
    type Breaks = fn(&InputRule) -> bool;
    let events_breaking: Vec<(NewEvent, Breaks)> = vec![
        (with(&|e| e.event_type = "A\0B".to_owned()), |r| {
            matches!(
                r,
                InputRule::NulCharacter {
                    field: Field::EventType(_)
                }
            )
        }),
        (with(&|e| e.event_type = String::new()), |r| {
            matches!(
                r,
                InputRule::Empty {
                    field: Field::EventType(_)
                }
            )
        }),
        (with(&|e| e.event_type = "T".repeat(256)), |r| {
            matches!(
                r,
                InputRule::TooLong {
                    field: Field::EventType(_),
                    ..
                }
            )
        }),
        (
            with(&|e| e.payload = RawJson::from_string(r#"{"name":"\ud800"}"#)),
            |r| {
                matches!(
                    r,
                    InputRule::UnstorableEscape {
                        field: Field::Payload(_)
                    }
                )
            },
        ),
        (
            with(&|e| e.payload = RawJson::from_string(r#"{"name":"a\u0000b"}"#)),
            |r| {
                matches!(
                    r,
                    InputRule::UnstorableEscape {
                        field: Field::Payload(_)
                    }
                )
            },
        ),
        (
            with(&|e| e.payload = RawJson::from_string("{not json")),
            |r| {
                matches!(
                    r,
                    InputRule::NotJson {
                        field: Field::Payload(_)
                    }
                )
            },
        ),
        (with(&|e| e.metadata = RawJson::from_string("[1]")), |r| {
            matches!(
                r,
                InputRule::NotAnObject {
                    field: Field::Metadata(_)
                }
            )
        }),
        (
            with(&|e| e.metadata = RawJson::from_string(r#"{"by":"\udc00"}"#)),
            |r| {
                matches!(
                    r,
                    InputRule::UnstorableEscape {
                        field: Field::Metadata(_)
                    }
                )
            },
        ),
    ];
    for (bad, expected) in events_breaking {
        let what = format!(
            "event type {:?}, payload {}, metadata {}",
            crate::stream::shown(&bad.event_type).to_string(),
            bad.payload,
            bad.metadata
        );
        let (rule, _) = broken_rule(
            store
                .append(key("s"), ExpectedVersion::Any, vec![event(0), bad])
                .await,
            &what,
        );
        assert!(expected(&rule), "{what}: broke {rule:?}");
    }
    assert_eq!(
        read_whole_log(&store, 100).await.len(),
        0,
        "nothing was written"
    );
    // The limits are inclusive, and the rules refuse nothing else.
    append(&store, &max_id, ExpectedVersion::NoStream, events(1, 1)).await;
    let mut edge = event(2);
    edge.event_type = "T".repeat(crate::contract::MAX_NAME_BYTES);
    edge.payload = RawJson::from_string(r#"{"crab":"\ud83e\udd80","nl":"\n","escaped":"\\u0000"}"#);
    append(
        &store,
        "edge",
        ExpectedVersion::NoStream,
        vec![edge.clone()],
    )
    .await;
    let stored = read(&store, "edge", 1, Until::End).await;
    assert_eq!(
        stored[0].payload.to_value().unwrap(),
        edge.payload.to_value().unwrap()
    );
    assert_eq!(stored[0].event_type, edge.event_type);
}

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression that
/// yields a fresh, empty store and is evaluated once per case.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            append_and_read_back, expected_any, expected_no_stream, expected_stream_exists,
            expected_exact, idempotent_resend, reused_event_id_is_rejected, invalid_batches,
            read_ranges, long_stream, replay_matches_read, global_log_order, snapshots,
            an_older_snapshot_does_not_replace_a_newer_one, stream_ids_verbatim,
            concurrent_appends_one_stream, concurrent_appends_many_streams,
            streams_are_keyed_by_tenant_type_and_id, snapshots_are_kept_apart,
            read_all_by_tenant, events_are_found_by_id, input_contract);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}
