//! Bad files, bad locations, schemas of another release, a busy database and bad rows: each is
//! one clear typed error, nothing is written, nothing panics.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{TempDir, TempStore, account, raw};
use es_core::{
    EventStore, ExpectedVersion, LoadError, LogScope, Position, Repository, StoreError, Until,
};
use es_examples::bank::Account;
use es_sqlite::{OpenError, SqliteOptions, SqliteStore};
use futures_util::TryStreamExt;
use sqlx::sqlite::SqlitePoolOptions;

/// The names of the entries of a directory.
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("the directory is readable")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The entries of a directory besides the `-wal` and `-shm` files SQLite keeps beside an open
/// WAL database (it creates them merely to read one).
fn entries_besides_wal(dir: &Path) -> BTreeSet<String> {
    entries(dir)
        .into_iter()
        .filter(|name| !name.ends_with("-wal") && !name.ends_with("-shm"))
        .collect()
}

/// Everything a database holds: the file and its write-ahead log (absent counts as empty).
fn content(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("the database file is readable");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    bytes.extend(std::fs::read(wal).unwrap_or_default());
    bytes
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = TempDir::new();
    let path = dir.path().join("notes.db");
    let junk = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &junk).unwrap();

    let error = SqliteStore::open(&path)
        .await
        .expect_err("junk is not a database");
    assert!(
        matches!(&error, OpenError::NotADatabase { path: p, .. } if *p == path),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("failed to open `{}`", path.display())),
        "{message}"
    );
    assert!(message.contains("not an SQLite database"), "{message}");

    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        junk,
        "the file is unchanged"
    );
    assert_eq!(
        entries(dir.path()),
        BTreeSet::from(["notes.db".to_owned()]),
        "no -wal, -shm or journal"
    );
}

#[tokio::test]
async fn a_path_through_a_regular_file_cannot_be_created() {
    let dir = TempDir::new();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "plain text").unwrap();
    let path = file.join("es.db");

    let error = SqliteStore::open(&path)
        .await
        .expect_err("a file is not a directory");
    let OpenError::CannotOpen {
        path: reported,
        reason,
    } = &error
    else {
        panic!("expected CannotOpen, got {error:?}");
    };
    assert_eq!(reported, &path);
    assert_eq!(
        reason,
        &format!("`{}` is a file, not a directory", file.display())
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "plain text");
    assert_eq!(entries(dir.path()), BTreeSet::from(["file.txt".to_owned()]));
}

#[tokio::test]
async fn a_missing_directory_is_named_and_not_created() {
    let dir = TempDir::new();
    let path = dir.path().join("missing").join("deeper").join("es.db");
    let error = SqliteStore::open(&path)
        .await
        .expect_err("the directory does not exist");
    let OpenError::CannotOpen { reason, .. } = &error else {
        panic!("expected CannotOpen, got {error:?}");
    };
    assert_eq!(
        reason,
        &format!(
            "directory `{}` does not exist",
            path.parent().unwrap().display()
        )
    );
    assert!(entries(dir.path()).is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_directory_in_place_of_the_file_is_named() {
    let dir = TempDir::new();
    let error = SqliteStore::open(dir.path())
        .await
        .expect_err("a directory is not a database file");
    assert!(
        matches!(&error, OpenError::CannotOpen { reason, .. } if reason.ends_with("is a directory")),
        "{error:?}"
    );
}

/// Permissions do not stop root, so a read-only *connection* stands for a read-only location:
/// SQLite reports `SQLITE_READONLY` for both, and the store must refuse before writing.
#[tokio::test]
async fn a_read_only_database_is_refused_before_anything_is_written() {
    let dir = TempDir::new();
    let path = dir.path().join("other-app.db");
    {
        // A database of another application: es-sqlite would have to create its tables.
        let pool = SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let before = content(&path);

    let read_only = SqliteStore::connect_options(&path).read_only(true);
    let pool = SqlitePoolOptions::new().connect_lazy_with(read_only);
    let store = SqliteStore::new(pool);
    let error = store
        .migrate()
        .await
        .expect_err("a read-only database cannot be migrated");
    store.close().await;
    assert!(
        matches!(&error, OpenError::ReadOnly { path: p, .. } if *p == path),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("read-only") && message.contains(&path.display().to_string()),
        "{message}"
    );

    assert!(content(&path) == before, "the file is unchanged");
    assert_eq!(
        entries(dir.path()),
        BTreeSet::from(["other-app.db".to_owned()])
    );
}

#[tokio::test]
async fn a_database_of_a_newer_es_sqlite_is_refused_before_migrating() {
    let dir = TempDir::new();
    let path = dir.db();
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .append(
            account("a"),
            ExpectedVersion::NoStream,
            vec![raw("Opened", serde_json::json!({ "owner": "o" }))],
        )
        .await
        .unwrap();
    // What a later release would have left: a migration this one does not know.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    let before = content(&path);
    let files = entries_besides_wal(dir.path());

    let error = SqliteStore::open(&path)
        .await
        .expect_err("the schema is newer");
    assert!(
        matches!(&error, OpenError::NewerSchema { path: p, found: 9999, supported: 3 } if *p == path),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("failed to open `{}`", path.display())),
        "{message}"
    );
    assert!(
        message.contains("newer es-sqlite") && message.contains("9999"),
        "{message}"
    );

    assert!(content(&path) == before, "the database is unchanged");
    assert_eq!(entries_besides_wal(dir.path()), files);
}

#[tokio::test]
async fn reopening_keeps_the_events_and_migrates_nothing_twice() {
    let dir = TempDir::new();
    let store = SqliteStore::open(dir.db()).await.unwrap();
    store
        .append(
            account("a"),
            ExpectedVersion::NoStream,
            vec![raw("Opened", serde_json::json!({ "owner": "o" }))],
        )
        .await
        .unwrap();
    store.close().await;
    let again = SqliteStore::open(dir.db()).await.unwrap();
    again.migrate().await.unwrap();
    assert_eq!(again.stream_version(account("a")).await.unwrap(), Some(1));
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(migrations, 3);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(journal, "wal");
}

/// Inserts a row by hand, bypassing the CHECK constraints, as a damaged or foreign writer would.
async fn insert_raw_row(
    store: &SqliteStore,
    version: i64,
    event_id: &str,
    event_type: &str,
    payload: &str,
) {
    let mut connection = store.pool().acquire().await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *connection)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO es_events (transaction_id, tenant, stream_type, stream_id, stream_version, event_id, \
           event_type, schema_version, payload, metadata, recorded_at) \
         VALUES ((SELECT coalesce(max(position), 0) + 1 FROM es_events), 'default', 'account', 'acc', ?1, ?2, ?3, \
           1, ?4, '{}', 0)",
    )
    .bind(version)
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .execute(&mut *connection)
    .await
    .unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = OFF")
        .execute(&mut *connection)
        .await
        .unwrap();
}

async fn open_account(store: &SqliteStore) {
    store
        .append(
            account("acc"),
            ExpectedVersion::NoStream,
            vec![raw("Opened", serde_json::json!({ "owner": "o" }))],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreadable_row_is_a_typed_error_naming_stream_and_version() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    open_account(store).await;
    insert_raw_row(
        store,
        2,
        "this-is-not-a-uuid-but-36-characters",
        "Deposited",
        "{\"amount\": 1}",
    )
    .await;

    let read: Vec<Result<_, _>> = store
        .read_stream(account("acc"), 1, Until::End)
        .collect_all()
        .await;
    assert_eq!(read.len(), 2, "the good event, then the error");
    assert!(read[0].is_ok());
    let Err(error) = &read[1] else {
        panic!("expected an error, got {:?}", read[1])
    };
    assert!(
        matches!(error, StoreError::CorruptRow { stream, stream_version: 2, reason } if stream == "account/acc" && reason.contains("event_id")),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("stream `account/acc`")
            && error.to_string().contains("version 2"),
        "{error}"
    );
    assert!(matches!(
        store
            .read_all(LogScope::AllTenants, Position::START, 10)
            .await,
        Err(StoreError::CorruptRow { .. })
    ));

    // A load reads only what a fold needs (`replay_stream`), and the event id is not part of it.
    let accounts = Repository::<Account, _>::new(store.clone());
    let loaded = accounts
        .load("acc")
        .await
        .expect("the fold's columns are readable");
    assert_eq!(loaded.version, 2);
}

#[tokio::test]
async fn a_corrupt_payload_or_an_unknown_type_fails_the_load_with_stream_and_version() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    open_account(store).await;
    insert_raw_row(
        store,
        2,
        &uuid::Uuid::new_v4().to_string(),
        "Deposited",
        "{\"amount\": ",
    )
    .await;
    let accounts = Repository::<Account, _>::new(store.clone());
    let error = accounts
        .load("acc")
        .await
        .expect_err("the payload is not JSON");
    assert!(
        matches!(&error, LoadError::Decode { stream, stream_version: 2, event_type, .. } if stream.as_key() == account("acc") && event_type == "Deposited"),
        "{error:?}"
    );

    let other = TempStore::new().await;
    open_account(&other.store).await;
    insert_raw_row(
        &other.store,
        2,
        &uuid::Uuid::new_v4().to_string(),
        "Teleported",
        "{}",
    )
    .await;
    let accounts = Repository::<Account, _>::new(other.store.clone());
    let error = accounts.load("acc").await.expect_err("the type is unknown");
    assert!(
        matches!(&error, LoadError::Decode { stream_version: 2, event_type, .. } if event_type == "Teleported"),
        "{error:?}"
    );
}

/// Collects a stream's items, errors included.
trait CollectAll {
    async fn collect_all(self) -> Vec<Result<es_core::RecordedEvent, StoreError>>;
}

impl CollectAll for es_core::EventStream<'_> {
    async fn collect_all(mut self) -> Vec<Result<es_core::RecordedEvent, StoreError>> {
        let mut items = Vec::new();
        loop {
            match self.as_mut().try_next().await {
                Ok(Some(event)) => items.push(Ok(event)),
                Ok(None) => return items,
                Err(error) => items.push(Err(error)),
            }
        }
    }
}

/// Text that SQLite's JSON cannot carry (invalid UTF-8) makes a page unparsable as one value:
/// the store reads that page row by row and still delivers the good events, then names the row.
#[tokio::test]
async fn a_row_of_invalid_utf8_is_named_after_the_good_events() {
    let temp = TempStore::new().await;
    let store = &temp.store;
    open_account(store).await;
    sqlx::query(
        "INSERT INTO es_events (position, transaction_id, tenant, stream_type, stream_id, stream_version, \
           event_id, event_type, schema_version, payload, metadata, recorded_at) \
         VALUES (2, 2, 'default', 'account', 'acc', 2, ?1, CAST(x'ff' AS TEXT), 1, '{}', '{}', 0)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(store.pool())
    .await
    .unwrap();

    let read: Vec<Result<_, _>> = store
        .read_stream(account("acc"), 1, Until::End)
        .collect_all()
        .await;
    assert_eq!(read.len(), 2, "the good event, then the error: {read:?}");
    assert!(read[0].is_ok());
    assert!(
        matches!(&read[1], Err(StoreError::CorruptRow { stream, stream_version: 2, reason }) if stream == "account/acc" && reason.contains("event_type")),
        "{:?}",
        read[1]
    );
    assert!(matches!(
        store
            .read_all(LogScope::AllTenants, Position::START, 10)
            .await,
        Err(StoreError::CorruptRow { .. })
    ));
    // A load reads its own narrower page, and names the same row.
    let loaded = Repository::<Account, _>::new(store.clone())
        .load("acc")
        .await;
    assert!(
        matches!(&loaded, Err(LoadError::Store(StoreError::CorruptRow { stream, stream_version: 2, reason })) if stream == "account/acc" && reason.contains("event_type")),
        "{loaded:?}"
    );
}

/// Opened without migrating, a store only reads the schema's version: a database that was
/// never migrated, or is ahead of this release, is refused and left as it was; one that is up
/// to date opens.
#[tokio::test]
async fn without_migrations_a_schema_of_another_release_is_refused_untouched() {
    let dir = TempDir::new();
    let path = dir.db();
    let no_migrations = || SqliteOptions::new().migrate(false);

    let error = SqliteStore::open_with(&path, no_migrations())
        .await
        .expect_err("a new file has no schema");
    assert!(
        matches!(&error, OpenError::NotMigrated { path: p, found: None, required: 3 } if *p == path),
        "{error:?}"
    );
    assert!(error.to_string().contains("migrate it first"), "{error}");
    let tables: i64 = {
        let store = SqliteStore::new(
            sqlx::sqlite::SqlitePoolOptions::new()
                .connect_with(SqliteStore::connect_options(&path))
                .await
                .unwrap(),
        );
        let tables = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
            .fetch_one(store.pool())
            .await
            .unwrap();
        // `new` on a pool of one's own does not migrate either; `migrate` does.
        store.migrate().await.unwrap();
        store.close().await;
        tables
    };
    assert_eq!(tables, 0, "nothing was created");

    let store = SqliteStore::open_with(&path, no_migrations())
        .await
        .expect("the schema is up to date");
    store
        .append(
            account("a"),
            ExpectedVersion::NoStream,
            vec![raw("Opened", serde_json::json!({ "owner": "o" }))],
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    let error = SqliteStore::open_with(&path, no_migrations())
        .await
        .expect_err("the schema is newer");
    assert!(
        matches!(&error, OpenError::NewerSchema { found: 9999, .. }),
        "{error:?}"
    );
}

/// A write lock held by another connection past the busy timeout makes writes fail as
/// unavailable, which is transient: the same append goes through once the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_busy_timeout_is_unavailable_and_transient() {
    let temp = TempStore::with_options(
        SqliteOptions::new().busy_timeout(std::time::Duration::from_millis(100)),
    )
    .await;
    let store = &temp.store;
    let other = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteStore::connect_options(temp.dir.db()))
        .await
        .unwrap();
    let blocker = other.begin_with("BEGIN IMMEDIATE").await.unwrap();

    let batch = vec![raw("Opened", serde_json::json!({ "owner": "o" }))];
    let error = store
        .append(account("a"), ExpectedVersion::NoStream, batch.clone())
        .await
        .expect_err("the write lock is held elsewhere");
    assert!(
        matches!(&error, StoreError::Unavailable { .. }) && error.is_transient(),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("append to stream `account/a`"),
        "{error}"
    );
    let lock = es_core::projection::ProjectionStore::try_lock(store, "p").await;
    assert!(
        matches!(&lock, Err(error) if error.is_transient()),
        "{lock:?}"
    );

    blocker.rollback().await.unwrap();
    let appended = store
        .append(account("a"), ExpectedVersion::NoStream, batch)
        .await
        .expect("the lock is free again");
    assert_eq!(appended.range().last_version, 1);
    other.close().await;
}
