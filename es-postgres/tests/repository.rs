//! The repository on `PgStore`: many tasks on one aggregate (no lost update), and bad rows that
//! must fail a load with a typed error naming the stream and version, never a panic.

mod common;

use common::raw_insert_row;
use es_core::contract::{Field, InputRule};
use es_core::{
    Aggregate, CommandContext, DecodeError, EventStore, ExpectedVersion, LoadError, LogScope,
    NewEvent, Position, RawJson, Repository, StoreError, StreamKey,
};
use es_examples::bank::{Account, Deposit, Open};
use es_postgres::{PgStore, testing};
use uuid::Uuid;

fn account(id: &str) -> StreamKey<'_> {
    StreamKey::new(Account::NAME, id)
}

async fn opened(store: &PgStore, id: &str) -> Repository<Account, PgStore> {
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts
        .execute(
            id,
            &Open {
                owner: "ada".to_owned(),
            },
            &CommandContext::new(),
        )
        .await
        .expect("the account opens");
    accounts
}

/// (e) 8 tasks x 100 deposits on one account, each task with a repository of its own (as 8
/// processes would be: clones of one repository queue their commands instead of racing): the
/// final balance is the sum of all of them; the conflicts met on the way were retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_aggregate() {
    const TASKS: i64 = 8;
    const COMMANDS: i64 = 100;
    let store = testing::store().await;
    let accounts = opened(&store, "account-hot").await;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let accounts = Repository::<Account, _>::new(store.clone()).with_max_retries(10_000);
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for i in 0..COMMANDS {
                let executed = accounts
                    .execute(
                        "account-hot",
                        &Deposit(task * 1000 + i + 1),
                        &CommandContext::new(),
                    )
                    .await
                    .expect("every deposit goes through eventually");
                conflicts += u64::from(executed.conflicts);
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let expected: i64 = (0..TASKS)
        .flat_map(|task| (0..COMMANDS).map(move |i| task * 1000 + i + 1))
        .sum();
    let loaded = accounts.load("account-hot").await.unwrap();
    println!(
        "{} deposits, {conflicts} conflicts retried",
        TASKS * COMMANDS
    );
    assert_eq!(loaded.state.balance, expected, "no deposit lost or doubled");
    assert_eq!(loaded.state.movements, (TASKS * COMMANDS) as u64);
    assert_eq!(loaded.version, (TASKS * COMMANDS + 1) as u64);
    assert_eq!(
        store.stream_version(account("account-hot")).await.unwrap(),
        Some(loaded.version)
    );
    assert!(
        conflicts > 0,
        "8 tasks on one aggregate met no conflict: the test did not contend"
    );
}

/// (f) Stream ids that try to break out of SQL or hold unusual characters work through the
/// repository as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_round_trip() {
    let store = testing::store().await;
    // 1,008 bytes: within the input contract's 1,024.
    let long = format!("account-{}", "é".repeat(500));
    for id in [
        "account-o'brien",
        "account-\"; DROP TABLE events; --",
        "account-日本語-🦀",
        "account-%_",
        long.as_str(),
    ] {
        let accounts = opened(&store, id).await;
        accounts
            .execute(id, &Deposit(5), &CommandContext::new())
            .await
            .unwrap();
        let loaded = accounts.load(id).await.unwrap();
        assert_eq!((loaded.state.balance, loaded.version), (5, 2), "{id:?}");
        let log: Vec<_> = store
            .read_all(LogScope::AllTenants, Position::START, 1000)
            .await
            .unwrap();
        assert!(
            log.iter().any(|e| e.stream_id == id),
            "{id:?} stored verbatim"
        );
    }
}

/// Loads `id` expecting a decoding failure at `version`.
async fn decode_failure(
    accounts: &Repository<Account, PgStore>,
    id: &str,
    version: u64,
) -> DecodeError {
    match accounts.load(id).await {
        Err(LoadError::Decode {
            stream,
            stream_version,
            source,
            ..
        }) => {
            assert_eq!((stream.as_key(), stream_version), (account(id), version));
            source
        }
        other => panic!("expected a decoding failure at version {version}, got {other:?}"),
    }
}

/// (f) A row with a corrupt payload, an unknown event type or a version newer than the code,
/// inserted behind the store's back, makes the load fail with a typed error naming the stream
/// and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_fail_loads_with_typed_errors() {
    let store = testing::store().await;
    let cases: [(&str, &str, i64, &str); 3] = [
        ("account-corrupt", "Deposited", 1, r#"{"amount": "a lot"}"#),
        ("account-unknown", "Teleported", 1, r#"{"to": "mars"}"#),
        ("account-future", "Deposited", 99, r#"{"amount": 1}"#),
    ];
    for (id, event_type, schema_version, payload) in cases {
        let accounts = opened(&store, id).await;
        let mut connection = store.pool().acquire().await.unwrap();
        raw_insert_row(
            &mut connection,
            &store,
            account(id),
            2,
            Uuid::new_v4(),
            event_type,
            schema_version,
            payload,
        )
        .await;
        let error = decode_failure(&accounts, id, 2).await;
        match (id, &error) {
            (
                "account-corrupt",
                DecodeError::InvalidPayload {
                    event_type,
                    version: 1,
                    ..
                },
            ) => {
                assert_eq!(event_type, "Deposited");
            }
            ("account-unknown", DecodeError::UnknownType { event_type }) => {
                assert_eq!(event_type, "Teleported")
            }
            ("account-future", DecodeError::NewerVersion { version: 99, .. }) => {}
            _ => panic!("{id}: unexpected decoding error {error:?}"),
        }
        let message = accounts.load(id).await.unwrap_err().to_string();
        assert!(
            message.contains(id) && message.contains("version 2"),
            "{message}"
        );
    }
}

/// (f) A row the envelope cannot hold (here a negative schema version, possible only once the
/// table's check is dropped) is a `CorruptRow` naming stream and version, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrepresentable_rows_are_corrupt_rows() {
    let store = testing::store().await;
    let accounts = opened(&store, "account-damaged").await;
    sqlx::query(&format!(
        "ALTER TABLE \"{}\".events DROP CONSTRAINT events_schema_version_check",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let mut connection = store.pool().acquire().await.unwrap();
    raw_insert_row(
        &mut connection,
        &store,
        account("account-damaged"),
        2,
        Uuid::new_v4(),
        "Deposited",
        -1,
        r#"{"amount": 1}"#,
    )
    .await;
    match accounts.load("account-damaged").await {
        Err(LoadError::Store(StoreError::CorruptRow {
            stream,
            stream_version,
            reason,
        })) => {
            assert_eq!(
                (stream.as_str(), stream_version),
                ("account/account-damaged", 2)
            );
            assert!(reason.contains("schema version"), "{reason}");
        }
        other => panic!("expected a corrupt row, got {other:?}"),
    }
}

/// (f) Payloads PostgreSQL cannot hold as `jsonb`, and ids with NUL, break the input contract:
/// refused before any round trip, with a message that does not quote the payload; nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstorable_input_breaks_the_input_contract() {
    let store = testing::store().await;
    let with_payload = |payload: &str| NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Tested".to_owned(),
        schema_version: 1,
        payload: RawJson::from_string(payload),
        metadata: RawJson::empty_object(),
    };
    let stream = StreamKey::new("raw", "s");
    for (payload, expected) in [
        ("secret-not-json", "not JSON"),
        (r#"{"secret": "nul \u0000 here"}"#, "escape"),
    ] {
        let result = store
            .append(stream, ExpectedVersion::Any, vec![with_payload(payload)])
            .await;
        match result {
            Err(error @ StoreError::InvalidInput { .. }) => {
                let message = error.to_string();
                assert!(!message.contains("secret"), "{message}");
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("{payload:?}: expected an invalid input, got {other:?}"),
        }
    }
    let nul = store
        .append(
            StreamKey::new("raw", "s\0"),
            ExpectedVersion::Any,
            vec![with_payload("{}")],
        )
        .await;
    assert!(
        matches!(
            nul,
            Err(StoreError::InvalidInput {
                rule: InputRule::NulCharacter {
                    field: Field::StreamId
                },
                ..
            })
        ),
        "{nul:?}"
    );
    assert_eq!(store.stream_version(stream).await.unwrap(), None);
}
