//! Upgrading a database of the first schema (streams keyed by id alone) to streams keyed by
//! tenant, type and id: every row survives under the default tenant, positions continue after
//! the old ones, and repositories load the old aggregates.

mod common;

use std::path::Path;

use common::{TempDir, account};
use es_core::projection::ProjectionStore;
use es_core::{
    CommandContext, DEFAULT_TENANT, EventStore, ExpectedVersion, LogScope, Position, Repository,
    StartedFrom, StreamKey, Until,
};
use es_examples::bank::{Account, Deposit};
use es_sqlite::SqliteStore;
use futures_util::TryStreamExt;
use sqlx::Row;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

/// The first migration's file, as released.
const FIRST_MIGRATION: &str = "0001_create_event_store.sql";

/// A database at `path` with only the first migration applied, recorded in `_sqlx_migrations`
/// exactly as the release that had only it recorded it (same version, description and
/// checksum).
async fn first_schema(dir: &TempDir, path: &Path) -> SqlitePool {
    let migrations = dir.path().join("first-release-migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(FIRST_MIGRATION),
        migrations.join(FIRST_MIGRATION),
    )
    .unwrap();
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteStore::connect_options(path))
        .await
        .unwrap();
    Migrator::new(migrations.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}

/// Inserts an event as the first release wrote them (no tenant column).
async fn old_event(
    pool: &SqlitePool,
    position: i64,
    transaction: i64,
    stream_id: &str,
    version: i64,
    event_type: &str,
    payload: &str,
) -> String {
    let event_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO es_events (position, transaction_id, stream_type, stream_id, stream_version, \
           event_id, event_type, schema_version, payload, metadata, recorded_at) \
         VALUES (?1, ?2, 'account', ?3, ?4, ?5, ?6, 1, ?7, '{\"source\":\"first release\"}', ?8)",
    )
    .bind(position)
    .bind(transaction)
    .bind(stream_id)
    .bind(version)
    .bind(&event_id)
    .bind(event_type)
    .bind(payload)
    .bind(1_700_000_000_000_000 + position)
    .execute(pool)
    .await
    .unwrap();
    event_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_first_schema_keeps_every_row_under_the_default_tenant() {
    let dir = TempDir::new();
    let path = dir.db();
    let pool = first_schema(&dir, &path).await;
    let opened = r#"{"owner":"ada"}"#;
    let ids = [
        old_event(&pool, 1, 1, "acc-1", 1, "Opened", opened).await,
        old_event(&pool, 2, 1, "acc-1", 2, "Deposited", r#"{"amount":10}"#).await,
        old_event(&pool, 3, 3, "acc-2", 1, "Opened", r#"{"owner":"bob"}"#).await,
        old_event(&pool, 4, 4, "acc-1", 3, "Deposited", r#"{"amount":5}"#).await,
        old_event(&pool, 5, 4, "acc-1", 4, "Deposited", r#"{"amount":7}"#).await,
        old_event(&pool, 6, 6, "acc-2", 2, "Deposited", r#"{"amount":1}"#).await,
    ];
    // Position 7 was handed out and its row removed since: it must never be handed out again.
    old_event(&pool, 7, 7, "acc-3", 1, "Opened", opened).await;
    sqlx::query("DELETE FROM es_events WHERE position = 7")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO es_snapshots (stream_id, stream_type, stream_version, state_version, state, taken_at) \
         VALUES ('acc-1', 'account', 2, 1, '{\"open\":true,\"owner\":\"ada\",\"balance\":10,\"movements\":1}', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO es_checkpoints (projection, transaction_id, position, updated_at) \
         VALUES ('balances', 4, 5, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO es_dead_letters (projection, transaction_id, position, event_id, stream_id, \
           stream_version, event_type, error, attempts, parked_at) \
         VALUES ('balances', 3, 3, ?1, 'acc-2', 1, 'Opened', 'the read model was down', 5, 0)",
    )
    .bind(&ids[2])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = SqliteStore::open(&path)
        .await
        .expect("the database migrates");

    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3]);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'es_%' ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "es_checkpoints",
            "es_dead_letters",
            "es_events",
            "es_inbox",
            "es_projection_locks",
            "es_snapshots"
        ],
        "the old tables are gone"
    );
    let sequences: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, seq FROM sqlite_sequence ORDER BY name")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        sequences,
        [("es_events".to_owned(), 7)],
        "the log's sequence is where it was"
    );
    let violations = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(violations.is_empty(), "no foreign key is violated");
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(integrity, "ok");

    let log = store
        .read_all(LogScope::AllTenants, Position::START, 100)
        .await
        .unwrap();
    let described: Vec<(u64, u64, &str, &str, &str, u64, String)> = log
        .iter()
        .map(|e| {
            (
                e.position.transaction,
                e.position.sequence,
                e.tenant.as_str(),
                e.stream_type.as_str(),
                e.stream_id.as_str(),
                e.stream_version,
                e.event_id.to_string(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64, &str, &str, &str, u64, String)> = [
        (1, 1, "acc-1", 1),
        (1, 2, "acc-1", 2),
        (3, 3, "acc-2", 1),
        (4, 4, "acc-1", 3),
        (4, 5, "acc-1", 4),
        (6, 6, "acc-2", 2),
    ]
    .into_iter()
    .zip(&ids)
    .map(|((transaction, sequence, stream, version), id)| {
        (
            transaction,
            sequence,
            DEFAULT_TENANT,
            "account",
            stream,
            version,
            id.clone(),
        )
    })
    .collect();
    assert_eq!(described, expected);
    assert_eq!(
        log[0].payload.as_str(),
        opened,
        "payloads are kept as stored"
    );
    assert_eq!(log[0].metadata.as_str(), r#"{"source":"first release"}"#);
    assert_eq!(log[5].recorded_at.timestamp_micros(), 1_700_000_000_000_006);
    assert_eq!(
        store
            .read_all(LogScope::Tenant(DEFAULT_TENANT), Position::START, 100)
            .await
            .unwrap(),
        log,
        "the default tenant's log is the whole log"
    );
    let found = store
        .find_event(es_core::LogScope::AllTenants, log[3].event_id)
        .await
        .unwrap()
        .expect("found by id");
    assert_eq!(found, log[3]);

    let snapshot = store
        .load_snapshot(account("acc-1"))
        .await
        .unwrap()
        .expect("the snapshot is kept");
    assert_eq!(snapshot.stream(), account("acc-1"));
    assert_eq!((snapshot.stream_version, snapshot.state_version), (2, 1));
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(Position {
            transaction: 4,
            sequence: 5
        })
    );
    let parked = store.dead_letters("balances").await.unwrap();
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    assert_eq!(
        (
            letter.tenant.as_str(),
            letter.stream_type.as_str(),
            letter.stream_id.as_str(),
            letter.stream_version
        ),
        (DEFAULT_TENANT, "account", "acc-2", 1)
    );
    assert_eq!(letter.event_id.to_string(), ids[2]);
    assert_eq!(
        (letter.error.as_str(), letter.attempts),
        ("the read model was down", 5)
    );

    // Repositories load the old aggregates, from the old snapshot where there is one.
    let accounts = Repository::<Account, _>::new(store.clone());
    let first = accounts.load("acc-1").await.unwrap();
    assert_eq!(
        (first.version, first.state.balance, first.state.movements),
        (4, 22, 3)
    );
    assert_eq!(first.started_from, StartedFrom::Snapshot(2));
    let second = accounts.load("acc-2").await.unwrap();
    assert_eq!(
        (
            second.version,
            second.state.owner.as_str(),
            second.state.balance
        ),
        (2, "bob", 1)
    );

    // New events continue the log after every position ever handed out, and the old streams
    // after their versions.
    let deposited = accounts
        .execute("acc-2", &Deposit(2), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!(deposited.version, 3);
    assert_eq!(
        deposited.last_position,
        Some(Position {
            transaction: 8,
            sequence: 8
        })
    );
    let batch = store
        .append(
            StreamKey::new("account", "acc-1").in_tenant("acme"),
            ExpectedVersion::NoStream,
            vec![common::raw("Opened", serde_json::json!({ "owner": "eve" }))],
        )
        .await
        .unwrap();
    assert_eq!(batch.range().last_position.sequence, 9);
    let acme: Vec<_> = store
        .read_stream(account("acc-1").in_tenant("acme"), 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        acme.len(),
        1,
        "another tenant's stream of the same id is new"
    );
    let tenants: Vec<String> = sqlx::query("SELECT DISTINCT tenant FROM es_events ORDER BY tenant")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("tenant"))
        .collect();
    assert_eq!(tenants, ["acme", "default"]);
    store.close().await;
}

#[tokio::test]
async fn an_empty_database_of_the_first_schema_starts_its_log_at_one() {
    let dir = TempDir::new();
    let path = dir.db();
    first_schema(&dir, &path).await.close().await;
    let store = SqliteStore::open(&path)
        .await
        .expect("the database migrates");
    let appended = store
        .append(
            account("a"),
            ExpectedVersion::NoStream,
            vec![common::raw("Opened", serde_json::json!({ "owner": "o" }))],
        )
        .await
        .unwrap();
    assert_eq!(
        appended.range().last_position,
        Position {
            transaction: 1,
            sequence: 1
        }
    );
    store.close().await;
}
