//! Reliability against the real server: writers committing out of order, lost
//! acknowledgements, a backend killed in the middle of an append. Each test runs in a schema of
//! its own.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Rng, backend_pid, eventually, raw_insert};
use es_core::conformance::events;
use es_core::{
    AppendOutcome, EventStore, ExpectedVersion, LogScope, Position, RecordedEvent, StoreError,
    StreamKey, Until,
};
use es_postgres::PgStore;
use es_postgres::testing;
use futures_util::TryStreamExt;
use uuid::Uuid;

fn key(id: &str) -> StreamKey<'_> {
    StreamKey::new("raw", id)
}

/// A store reading the log without waiting for the horizon: reads that must show the log held
/// back return at once.
fn impatient(store: &PgStore) -> PgStore {
    PgStore::with_options(
        store.pool().clone(),
        store.options().clone().horizon_wait(Duration::ZERO),
    )
}

async fn read_all(store: &PgStore, after: Position, limit: usize) -> Vec<RecordedEvent> {
    store
        .read_all(LogScope::AllTenants, after, limit)
        .await
        .expect("read_all works")
}

fn n_of(event: &RecordedEvent) -> i64 {
    event.payload.to_value().expect("payload is JSON")["n"]
        .as_i64()
        .expect("payload has n")
}

async fn naive_positions_after(store: &PgStore, after: i64) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT position FROM \"{}\".events WHERE position > $1 ORDER BY position",
        store.schema()
    ))
    .bind(after)
    .fetch_all(store.pool())
    .await
    .expect("naive read works")
}

/// (a) Writer T1 begins and inserts; writer T2 inserts and commits; a reader reads; T1 commits;
/// the reader continues. It sees both events exactly once, in a consistent order, while a reader
/// that follows positions alone skips T1's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_interleaving() {
    let store = testing::store().await;
    // Reads that must show the log held back do not wait for the horizon.
    let impatient = impatient(&store);
    store
        .append(key("before"), ExpectedVersion::NoStream, events(0, 1))
        .await
        .unwrap();
    let before = read_all(&store, Position::START, 10).await;
    assert_eq!(before.len(), 1);
    let checkpoint = before[0].position;
    let naive_checkpoint = naive_positions_after(&store, 0).await[0];

    let mut t1 = store.pool().begin().await.unwrap();
    raw_insert(&mut t1, &store, key("one"), 1, 1).await;
    let mut t2 = store.pool().begin().await.unwrap();
    raw_insert(&mut t2, &store, key("two"), 1, 2).await;
    t2.commit().await.unwrap();

    assert!(
        read_all(&impatient, checkpoint, 10).await.is_empty(),
        "T2 committed but T1, older, still runs: nothing may be delivered yet"
    );
    // The hazard this store avoids: by position, T2's event is visible and T1's is not.
    let naive_seen = naive_positions_after(&store, naive_checkpoint).await;
    assert_eq!(
        naive_seen.len(),
        1,
        "a position reader sees T2's event only"
    );
    let naive_checkpoint = naive_seen[0];

    t1.commit().await.unwrap();
    let after = read_all(&store, checkpoint, 10).await;
    assert_eq!(
        after.iter().map(n_of).collect::<Vec<_>>(),
        [1, 2],
        "T1's event, then T2's"
    );
    assert!(after[0].position < after[1].position);
    assert!(read_all(&store, after[1].position, 10).await.is_empty());
    assert!(
        naive_positions_after(&store, naive_checkpoint)
            .await
            .is_empty(),
        "the position reader moved past T1's event and never sees it"
    );
}

/// (a) The other interleaving: T1 takes its transaction id first but inserts last, so its event
/// has the higher position and the lower transaction id. The log still delivers each event once,
/// in (transaction, position) order, and nothing until T1 ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_interleaving_late_insert() {
    let store = testing::store().await;
    let impatient = impatient(&store);
    let mut t1 = store.pool().begin().await.unwrap();
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *t1)
        .await
        .unwrap();
    let mut t2 = store.pool().begin().await.unwrap();
    raw_insert(&mut t2, &store, key("two"), 1, 2).await;
    t2.commit().await.unwrap();
    raw_insert(&mut t1, &store, key("one"), 1, 1).await;
    assert!(read_all(&impatient, Position::START, 10).await.is_empty());

    // A patient reader waits for T1 within its horizon wait.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { read_all(&store, Position::START, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    t1.commit().await.unwrap();
    let log = reader.await.unwrap();
    assert_eq!(log.iter().map(n_of).collect::<Vec<_>>(), [1, 2]);
    assert!(log[0].position.transaction < log[1].position.transaction);
    assert!(
        log[0].position.sequence > log[1].position.sequence,
        "T1's event has the higher position, yet comes first"
    );
}

/// (b) 8 writers insert with random delays inside their transactions (some roll back) while a
/// reader tails the log: the reader sees every committed event exactly once, in the store's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_writers_and_tailing_reader() {
    const WRITERS: u64 = 8;
    const TRANSACTIONS: u64 = 15;
    let store = testing::store().await;
    let mut rng = Rng::from_env("randomized_writers_and_tailing_reader");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    let reader = {
        let store = impatient(&store);
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = Position::START;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = read_all(&store, after, 7).await;
                match page.last() {
                    Some(last) => after = last.position,
                    // Only stop on an empty page read after the writers finished.
                    None if finished => return seen,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
                seen.extend(page);
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let mut rng = Rng::seeded(rng.next());
        writers.push(tokio::spawn(async move {
            let stream = format!("writer-{writer}");
            let mut version = 0;
            let mut committed = Vec::new();
            for transaction in 0..TRANSACTIONS {
                let mut tx = store.pool().begin().await.unwrap();
                tokio::time::sleep(rng.pause(3)).await;
                let count = 1 + rng.below(3) as i64;
                let mut ids = Vec::new();
                for i in 0..count {
                    let n = (writer * 1000 + transaction * 10) as i64 + i;
                    ids.push(raw_insert(&mut tx, &store, key(&stream), version + i + 1, n).await);
                    tokio::time::sleep(rng.pause(3)).await;
                }
                if rng.below(10) == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    version += count;
                    committed.extend(ids);
                }
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let seen_ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    let distinct: HashSet<Uuid> = seen_ids.iter().copied().collect();
    assert_eq!(distinct.len(), seen_ids.len(), "no event delivered twice");
    assert_eq!(
        distinct, committed,
        "every committed event delivered, nothing else"
    );
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let mut log = Vec::new();
    let mut after = Position::START;
    loop {
        let page = read_all(&store, after, 100).await;
        let Some(last) = page.last() else { break };
        after = last.position;
        log.extend(page.into_iter().map(|e| e.event_id));
    }
    assert_eq!(seen_ids, log, "the tailing reader saw the store's order");
    // The writers did create the hazard: positions out of commit-safe order.
    let inversions = seen
        .windows(2)
        .filter(|w| w[0].position.sequence > w[1].position.sequence)
        .count();
    println!("{} events, {inversions} position inversions", seen.len());
    assert!(
        inversions > 0,
        "the interleaving produced no out-of-order positions"
    );
}

/// (c) An append whose reply was lost is sent again: the batch is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgement_resend() {
    let store = testing::store().await;
    let batch = events(1, 3);
    let first = store
        .append(key("s"), ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let resent = store
        .append(key("s"), ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(resent, AppendOutcome::AlreadyAppended(first.range()));

    // Replies lost at random points: the first attempt is abandoned mid-flight, then resent.
    let mut rng = Rng::from_env("lost_acknowledgement_resend");
    let mut version = 3;
    for round in 0..30u64 {
        let batch = events(100 + round * 10, 2);
        let expected = ExpectedVersion::Exact(version);
        let attempt = store.append(key("s"), expected, batch.clone());
        let abandoned = tokio::time::timeout(rng.pause(4), attempt).await;
        let outcome = store.append(key("s"), expected, batch).await.unwrap();
        match (&abandoned, &outcome) {
            (Ok(Ok(AppendOutcome::Appended(range))), AppendOutcome::AlreadyAppended(again)) => {
                assert_eq!(range, again);
            }
            (Err(_), AppendOutcome::Appended(_) | AppendOutcome::AlreadyAppended(_)) => {}
            other => panic!("round {round}: unexpected outcomes {other:?}"),
        }
        assert_eq!(outcome.range().first_version, version + 1);
        version += 2;
        assert_eq!(store.stream_version(key("s")).await.unwrap(), Some(version));
    }
    let stored: Vec<RecordedEvent> = store
        .read_stream(key("s"), 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        stored.len() as u64,
        version,
        "every batch stored exactly once"
    );

    // The resend racing the original: one writes, the other reports it written.
    for round in 0..20u64 {
        let batch = events(1000 + round, 1);
        let expected = ExpectedVersion::Exact(version);
        let (a, b) = tokio::join!(
            store.append(key("s"), expected, batch.clone()),
            store.append(key("s"), expected, batch)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.range(), b.range());
        let appended = [a, b]
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Appended(_)))
            .count();
        assert_eq!(appended, 1, "round {round}: exactly one of the two wrote");
        version += 1;
    }
    assert_eq!(store.stream_version(key("s")).await.unwrap(), Some(version));
}

/// (d) The backend running an append is terminated after the batch's first rows are inserted:
/// the append fails as unavailable (a retry may succeed), nothing of the batch is stored, and the
/// store keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_mid_append() {
    let store = testing::store().await;
    let batch = events(1, 5);
    // A blocker holds the third event's id in an open transaction, so the append inserts two rows
    // and then waits on the unique index.
    let mut blocker = store.pool().begin().await.unwrap();
    let blocker_pid = backend_pid(&mut blocker).await;
    common::raw_insert_row(
        &mut blocker,
        &store,
        key("blocker"),
        1,
        batch[2].event_id,
        "Tested",
        1,
        "{}",
    )
    .await;

    let append = {
        let store = store.clone();
        let batch = batch.clone();
        tokio::spawn(async move {
            store
                .append(key("victim"), ExpectedVersion::NoStream, batch)
                .await
        })
    };
    let admin = store.pool().clone();
    let victim: i32 = eventually("the append to wait on the blocker", || {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
            )
            .bind(blocker_pid)
            .fetch_optional(&admin)
            .await
            .unwrap()
        }
    })
    .await;
    // Read again: the view's row of the first look may predate the wait it found.
    let has_written: bool =
        sqlx::query_scalar("SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = $1")
            .bind(victim)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(has_written, "the append wrote rows before it blocked");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(victim)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(terminated);
    let result = append.await.unwrap();
    assert!(
        matches!(&result, Err(error @ StoreError::Unavailable { .. }) if error.is_transient()),
        "the killed append fails as unavailable: {result:?}"
    );
    blocker.rollback().await.unwrap();

    assert_eq!(
        store.stream_version(key("victim")).await.unwrap(),
        None,
        "none of the batch"
    );
    assert!(read_all(&store, Position::START, 100).await.is_empty());
    let outcome = store
        .append(key("victim"), ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("the store keeps working");
    assert!(matches!(outcome, AppendOutcome::Appended(range) if range.last_version == 5));
    let stored: Vec<Uuid> = store
        .read_stream(key("victim"), 1, Until::End)
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored, batch.iter().map(|e| e.event_id).collect::<Vec<_>>());
}

/// Appends expecting any version never report a conflict, however contended the stream (they
/// retry internally after a unique violation), and each batch stays contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_never_conflicts_under_contention() {
    let store = testing::store().await;
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                store
                    .append(key("hot"), ExpectedVersion::Any, events(task * 100 + i, 2))
                    .await
                    .expect("an append expecting any version never fails");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored: Vec<RecordedEvent> = store
        .read_stream(key("hot"), 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored.len(), 8 * 25 * 2);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, e)| e.stream_version == i as u64 + 1)
    );
    // Each batch of two stays together: appends are atomic and never interleave.
    let mut by_batch: HashMap<Position, Vec<u64>> = HashMap::new();
    for pair in stored.chunks(2) {
        assert_eq!(pair[0].position.transaction, pair[1].position.transaction);
        by_batch
            .entry(pair[0].position)
            .or_default()
            .push(pair[0].stream_version);
    }
    assert_eq!(by_batch.len(), 8 * 25);
}
