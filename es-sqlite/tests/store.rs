//! SQLite-specific store behaviour beyond the conformance suite: the repository under
//! contention, gap-free tailing of the log, cancelled appends, the one-statement append paths,
//! times in microseconds that never decrease, and other processes on the same file.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{TempStore, account, numbers, raw, whole_log};
use es_core::{
    AppendOutcome, CommandContext, EventStore, ExpectedVersion, LoadError, LogScope, Position,
    RecordedEvent, Repository, StoreError, Until,
};
use es_examples::bank::{Account, Deposit, Open};
use es_sqlite::SqliteOptions;
use futures_util::TryStreamExt;

fn numbered(n: u64) -> es_core::NewEvent {
    raw("Numbered", serde_json::json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_times_a_hundred_deposits_on_one_account_lose_nothing() {
    const TASKS: i64 = 8;
    const COMMANDS: i64 = 100;
    let temp = TempStore::new().await;
    let accounts = Repository::<Account, _>::new(temp.store.clone()).with_max_retries(10_000);
    accounts
        .execute(
            "acc-1",
            &Open {
                owner: "ada".into(),
            },
            &CommandContext::new(),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for command in 0..COMMANDS {
                let amount = task * 1000 + command + 1;
                let done = accounts
                    .execute("acc-1", &Deposit(amount), &CommandContext::new())
                    .await
                    .unwrap_or_else(|error| panic!("task {task} deposit {command}: {error}"));
                conflicts += u64::from(done.conflicts);
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let expected: i64 = (0..TASKS)
        .flat_map(|task| (0..COMMANDS).map(move |c| task * 1000 + c + 1))
        .sum();
    let loaded = accounts.load("acc-1").await.unwrap();
    assert_eq!(loaded.state.balance, expected, "every deposit counted once");
    assert_eq!(loaded.state.movements, (TASKS * COMMANDS) as u64);
    assert_eq!(loaded.version, (TASKS * COMMANDS) as u64 + 1);
    let versions: Vec<u64> = temp
        .store
        .read_stream(account("acc-1"), 1, Until::End)
        .map_ok(|event| event.stream_version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        versions,
        (1..=(TASKS * COMMANDS) as u64 + 1).collect::<Vec<_>>()
    );
    println!("conflicts retried: {conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_sees_every_event_once_in_order_while_writers_commit() {
    const WRITERS: u64 = 8;
    const BATCHES: u64 = 30;
    let temp = TempStore::new().await;
    let reader_store = temp.store.clone();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut seen: Vec<RecordedEvent> = Vec::new();
        let mut after = Position::START;
        loop {
            let finished = *done_rx.borrow_and_update();
            let batch = reader_store
                .read_all(LogScope::AllTenants, after, 7)
                .await
                .unwrap();
            if let Some(last) = batch.last() {
                after = last.position;
                seen.extend(batch);
            } else if finished {
                return seen;
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(2), done_rx.changed()).await;
            }
        }
    });
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = temp.store.clone();
        writers.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                let size = 1 + (writer + batch) % 3;
                let events = (0..size)
                    .map(|i| numbered(writer * 10_000 + batch * 10 + i))
                    .collect();
                store
                    .append(
                        numbers(&format!("w-{writer}")),
                        ExpectedVersion::Any,
                        events,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done_tx.send(true).unwrap();
    let seen = reader.await.unwrap();
    let log = whole_log(&temp.store).await;
    assert_eq!(
        seen, log,
        "the tailing reader saw the whole log, in its order"
    );
    let ids: HashSet<_> = seen.iter().map(|event| event.event_id).collect();
    assert_eq!(ids.len(), seen.len(), "no event twice");
    assert!(
        seen.windows(2)
            .all(|pair| pair[0].position < pair[1].position)
    );
    let expected: u64 = (0..WRITERS)
        .flat_map(|w| (0..BATCHES).map(move |b| 1 + (w + b) % 3))
        .sum();
    assert_eq!(seen.len() as u64, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_append_stores_all_of_its_batch_or_nothing_and_the_store_goes_on() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    let mut sent = BTreeMap::new();
    for attempt in 0u64..60 {
        let batch: Vec<_> = (0..25).map(|i| numbered(attempt * 100 + i)).collect();
        let first_id = batch[0].event_id;
        // Cancel at different points of the append: before, during and after its transaction.
        let budget = Duration::from_micros(attempt * 97 % 4000);
        let outcome = tokio::time::timeout(
            budget,
            store.append(numbers("s"), ExpectedVersion::Any, batch),
        )
        .await;
        if let Ok(Err(error)) = &outcome {
            panic!("attempt {attempt}: an append that was not cancelled failed: {error}");
        }
        sent.insert(first_id, outcome.is_ok());
    }
    // A dropped append may still commit a moment later, like one whose reply was lost. The
    // store keeps working (nothing was left holding the write lock), and once this append
    // went through, every earlier one has committed or rolled back.
    let settled = tokio::time::timeout(
        Duration::from_secs(10),
        store.append(
            numbers("s"),
            ExpectedVersion::Any,
            (0..25).map(|i| numbered(9_000 + i)).collect(),
        ),
    )
    .await
    .expect("no lock was left behind")
    .unwrap();
    let log = whole_log(store).await;
    assert_eq!(settled.range().last_position, log.last().unwrap().position);
    let mut batches: BTreeMap<u64, Vec<&RecordedEvent>> = BTreeMap::new();
    for event in &log {
        batches
            .entry(event.position.transaction)
            .or_default()
            .push(event);
    }
    for (transaction, events) in &batches {
        assert_eq!(events.len(), 25, "batch {transaction} is whole");
        let first = events[0].payload.to_value().unwrap()["n"].as_u64().unwrap();
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e.payload.to_value().unwrap()["n"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (first..first + 25).collect::<Vec<_>>());
        assert!(
            sent.contains_key(&events[0].event_id)
                || *transaction == settled.range().last_position.transaction
        );
    }
    let stored: HashSet<_> = batches.values().map(|events| events[0].event_id).collect();
    for (first_id, acknowledged) in &sent {
        assert!(
            !acknowledged || stored.contains(first_id),
            "acknowledged batch {first_id} is stored"
        );
    }
    assert!(
        sent.values().any(|&acknowledged| !acknowledged),
        "some appends were cancelled"
    );
    let versions: Vec<u64> = log.iter().map(|event| event.stream_version).collect();
    assert_eq!(
        versions,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "versions stay contiguous"
    );
}

#[tokio::test]
async fn time_travel_by_version_and_by_time() {
    let temp = TempStore::new().await;
    let accounts = Repository::<Account, _>::new(temp.store.clone());
    let context = CommandContext::new();
    accounts
        .execute(
            "acc",
            &Open {
                owner: "ada".into(),
            },
            &context,
        )
        .await
        .unwrap();
    accounts
        .execute("acc", &Deposit(10), &context)
        .await
        .unwrap();
    let events: Vec<RecordedEvent> = temp
        .store
        .read_stream(account("acc"), 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    let cut = events[1].recorded_at;
    tokio::time::sleep(Duration::from_millis(5)).await;
    for amount in [20, 30, 40, 50, 60, 70] {
        accounts
            .execute("acc", &Deposit(amount), &context)
            .await
            .unwrap();
    }
    assert_eq!(accounts.load("acc").await.unwrap().state.balance, 280);
    let at_three = accounts.load_at_version("acc", 3).await.unwrap();
    assert_eq!((at_three.version, at_three.state.balance), (3, 30));
    let at_cut = accounts.load_at_time("acc", cut).await.unwrap();
    assert_eq!((at_cut.version, at_cut.state.balance), (2, 10));
    let before = accounts
        .load_at_time("acc", cut - chrono::Duration::days(1))
        .await;
    assert!(
        matches!(before, Err(LoadError::NotFound { .. })),
        "{before:?}"
    );

    let log = whole_log(&temp.store).await;
    assert!(
        log.windows(2)
            .all(|pair| pair[0].recorded_at <= pair[1].recorded_at),
        "times never decrease"
    );
    assert!(
        log.iter()
            .all(|event| event.recorded_at.timestamp_subsec_nanos() % 1000 == 0),
        "microseconds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_file_share_the_log_and_its_guarantees() {
    let temp = TempStore::new().await;
    let other = temp.second_instance(SqliteOptions::new()).await;
    let mut tasks = Vec::new();
    for (index, store) in [temp.store.clone(), other.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            let mut conflicts = 0u64;
            while written < 40 {
                let current = store.stream_version(numbers("shared")).await.unwrap();
                let expected = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                match store
                    .append(
                        numbers("shared"),
                        expected,
                        vec![numbered(index as u64 * 1000 + written)],
                    )
                    .await
                {
                    Ok(_) => written += 1,
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(error) => panic!("instance {index}: {error}"),
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let events: Vec<RecordedEvent> = other
        .read_stream(numbers("shared"), 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    let versions: Vec<u64> = events.iter().map(|event| event.stream_version).collect();
    assert_eq!(versions, (1..=80).collect::<Vec<_>>());
    let numbers: HashSet<u64> = events
        .iter()
        .map(|event| event.payload.to_value().unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers.len(),
        80,
        "nothing lost or doubled across instances"
    );
    other.close().await;
}

/// A single event takes the one-statement path; re-sending it, a conflict and a stream whose
/// version cannot grow still get the general path's answers.
#[tokio::test]
async fn a_single_event_append_answers_like_a_batch() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    let one = numbered(1);
    let first = store
        .append(numbers("s"), ExpectedVersion::NoStream, vec![one.clone()])
        .await
        .unwrap();
    assert!(matches!(first, AppendOutcome::Appended(_)));
    assert_eq!(
        (first.range().first_version, first.range().last_version),
        (1, 1)
    );
    assert_eq!(
        first.range().last_position.transaction,
        first.range().last_position.sequence
    );
    // Re-sent with an expectation that no longer holds, then with one that does.
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let again = store
            .append(numbers("s"), expected, vec![one.clone()])
            .await
            .unwrap();
        assert_eq!(
            again,
            AppendOutcome::AlreadyAppended(first.range()),
            "{expected}"
        );
    }
    let conflict = store
        .append(numbers("s"), ExpectedVersion::Exact(5), vec![numbered(2)])
        .await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::Conflict {
                actual: Some(1),
                ..
            })
        ),
        "{conflict:?}"
    );
    let second = store
        .append(numbers("s"), ExpectedVersion::Exact(1), vec![numbered(2)])
        .await
        .unwrap();
    assert_eq!(second.range().last_version, 2);
    assert_eq!(
        second.range().last_position.sequence,
        first.range().last_position.sequence + 1
    );

    // A stream at the largest version, written by hand: the append is refused, not wrapped.
    sqlx::query(
        "INSERT INTO es_events (position, transaction_id, tenant, stream_type, stream_id, \
           stream_version, event_id, event_type, schema_version, payload, metadata, recorded_at) \
         VALUES (100, 100, 'default', 'numbers', 'full', 9223372036854775807, ?1, 'Numbered', 1, \
           '{}', '{}', 0)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(store.pool())
    .await
    .unwrap();
    let overflow = store
        .append(numbers("full"), ExpectedVersion::Any, vec![numbered(3)])
        .await;
    assert!(
        matches!(&overflow, Err(error @ StoreError::Backend { .. }) if error.to_string().contains("exceed")),
        "{overflow:?}"
    );
    let log = whole_log(store).await;
    assert_eq!(log.len(), 3, "nothing else was written");
}

/// Cancelled single-event appends (the one-statement path) commit whole or not at all, and
/// leave no lock behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_single_event_appends_leave_a_contiguous_stream() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    let mut acknowledged = Vec::new();
    for attempt in 0u64..80 {
        let event = numbered(attempt);
        let id = event.event_id;
        let budget = Duration::from_micros(attempt * 37 % 1500);
        let outcome = tokio::time::timeout(
            budget,
            store.append(numbers("s"), ExpectedVersion::Any, vec![event]),
        )
        .await;
        if let Ok(result) = outcome {
            result.unwrap_or_else(|error| panic!("attempt {attempt}: {error}"));
            acknowledged.push(id);
        }
    }
    let last = tokio::time::timeout(
        Duration::from_secs(10),
        store.append(numbers("s"), ExpectedVersion::Any, vec![numbered(1_000)]),
    )
    .await
    .expect("no lock was left behind")
    .unwrap();
    let stream: Vec<RecordedEvent> = store
        .read_stream(numbers("s"), 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    let versions: Vec<u64> = stream.iter().map(|event| event.stream_version).collect();
    assert_eq!(versions, (1..=stream.len() as u64).collect::<Vec<_>>());
    assert_eq!(last.range().last_version, stream.len() as u64);
    let stored: HashSet<_> = stream.iter().map(|event| event.event_id).collect();
    assert!(acknowledged.iter().all(|id| stored.contains(id)));
}

/// Batches whose expectation names the version (`NoStream`, `Exact`) take the one-statement
/// path, others the general one; ranges, positions and transaction ids agree either way.
#[tokio::test]
async fn batches_report_the_same_ranges_on_either_path() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    let first = store
        .append(
            numbers("s"),
            ExpectedVersion::NoStream,
            (1..=3).map(numbered).collect(),
        )
        .await
        .unwrap();
    let other = store
        .append(
            numbers("t"),
            ExpectedVersion::Any,
            (4..=5).map(numbered).collect(),
        )
        .await
        .unwrap();
    let second = store
        .append(
            numbers("s"),
            ExpectedVersion::Exact(3),
            (6..=9).map(numbered).collect(),
        )
        .await
        .unwrap();
    let range = |outcome: AppendOutcome| {
        let range = outcome.range();
        (
            range.first_version,
            range.last_version,
            range.last_position.transaction,
            range.last_position.sequence,
        )
    };
    assert_eq!(range(first), (1, 3, 1, 3));
    assert_eq!(range(other), (1, 2, 4, 5));
    assert_eq!(range(second), (4, 7, 6, 9));
    let log = whole_log(store).await;
    let positions: Vec<(u64, u64)> = log
        .iter()
        .map(|event| (event.position.transaction, event.position.sequence))
        .collect();
    assert_eq!(
        positions,
        vec![
            (1, 1),
            (1, 2),
            (1, 3),
            (4, 4),
            (4, 5),
            (6, 6),
            (6, 7),
            (6, 8),
            (6, 9)
        ]
    );
    let stale = store
        .append(
            numbers("s"),
            ExpectedVersion::Exact(3),
            (10..=11).map(numbered).collect(),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                actual: Some(7),
                ..
            })
        ),
        "{stale:?}"
    );
    assert_eq!(whole_log(store).await.len(), 9);
}
