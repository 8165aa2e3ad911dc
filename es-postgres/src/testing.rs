//! Test helpers (feature `testing`): stores in fresh schemas of a real server, so tests run in
//! parallel without seeing each other's events.
//!
//! ```no_run
//! # async fn demo() {
//! let store = es_postgres::testing::store().await; // schema es_test_<time>_<random>, migrated
//! # }
//! ```
//!
//! The server is the one `DATABASE_URL` names, by default [`DEFAULT_DATABASE_URL`]. When it
//! does not answer, the helpers panic with one message saying how to start it: tests on
//! PostgreSQL fail rather than skip.
//!
//! Test schemas are not dropped when a test ends (a store cannot know when its last user is
//! done); instead, the first helper call of each process drops test schemas older than ten minutes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

use crate::{PgOptions, PgStore};

/// The server tests use when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The prefix of every test schema.
pub const SCHEMA_PREFIX: &str = "es_test_";

/// How many connections a test pool opens at most: tests run in parallel against a server that
/// accepts 100 connections.
pub const MAX_CONNECTIONS: u32 = 6;

/// How long a test store's `read_all` waits for transactions holding back committed events
/// (see [`PgOptions::horizon_wait`]): long, so that a test is not disturbed by another test
/// (of this process or another one on the same server) holding a write transaction open for a
/// while. A test that wants to see the log held back sets its own, shorter wait.
pub const TEST_HORIZON_WAIT: Duration = Duration::from_secs(10);

/// Test schemas older than this are dropped by the next test process.
const STALE_AFTER: Duration = Duration::from_secs(600);

static SWEPT: AtomicBool = AtomicBool::new(false);

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A small pool ([`MAX_CONNECTIONS`]) on the test server.
///
/// # Panics
///
/// When `DATABASE_URL` is malformed or the server does not answer, with a message saying how to
/// start it or which `DATABASE_URL` to set.
pub async fn pool() -> PgPool {
    let url = database_url();
    let options: PgConnectOptions = url.parse().unwrap_or_else(|error| {
        panic!(
            "DATABASE_URL is not a PostgreSQL URL ({error}); {}",
            how_to_fix()
        )
    });
    let server = format!(
        "{}:{} (database `{}`, user `{}`)",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("<default>"),
        options.get_username(),
    );
    let unreachable = |error: sqlx::Error| -> ! {
        panic!(
            "PostgreSQL does not answer at {server}: {error}\n{}",
            how_to_fix()
        )
    };
    // One direct connection first: it fails at once with the real cause (connection refused,
    // unknown user), where a pool would retry until its timeout and then report only that.
    match PgConnection::connect_with(&options).await {
        Ok(connection) => {
            let _ = connection.close().await;
        }
        Err(error) => unreachable(error),
    }
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .unwrap_or_else(|error| unreachable(error));
    if !SWEPT.swap(true, Ordering::SeqCst) {
        drop_stale_schemas(&pool).await;
    }
    pool
}

fn how_to_fix() -> String {
    format!(
        "these tests need a PostgreSQL server (15 or newer). Start the local one with\n    \
         pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
         or set DATABASE_URL to a server you may create schemas on (default {DEFAULT_DATABASE_URL})"
    )
}

/// A fresh, unused schema name: `es_test_<unix seconds>_<random>`.
pub fn fresh_schema_name() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{SCHEMA_PREFIX}{seconds}_{}", &random[..16])
}

/// A migrated store in a fresh schema, on a fresh [`pool`].
///
/// # Panics
///
/// When the server does not answer (see [`pool`]) or the migrations fail.
pub async fn store() -> PgStore {
    store_on(pool().await).await
}

/// The options of a test store: a [fresh schema](fresh_schema_name) and a
/// [`TEST_HORIZON_WAIT`].
pub fn options() -> PgOptions {
    PgOptions::new()
        .schema(&fresh_schema_name())
        .unwrap_or_else(|error| panic!("the generated schema name is invalid: {error}"))
        .horizon_wait(TEST_HORIZON_WAIT)
}

/// A migrated store on `pool` with [`options`]: a fresh schema.
///
/// # Panics
///
/// When the migrations fail.
pub async fn store_on(pool: PgPool) -> PgStore {
    store_with(pool, options()).await
}

/// A migrated store on `pool` with `options` (give them a [fresh schema](fresh_schema_name)).
///
/// # Panics
///
/// When the migrations fail.
pub async fn store_with(pool: PgPool, options: PgOptions) -> PgStore {
    let store = PgStore::with_options(pool, options);
    store.migrate().await.unwrap_or_else(|error| {
        panic!("migrating test schema `{}` failed: {error}", store.schema())
    });
    store
}

/// The backend process holding the lock of `projection` in the store's schema, if any.
///
/// # Panics
///
/// When the server does not answer.
pub async fn lock_holder(store: &PgStore, projection: &str) -> Option<i32> {
    sqlx::query_scalar(&format!(
        "SELECT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((classid::bigint << 32) | objid::bigint) = {}",
        crate::sql::ADVISORY_KEY
    ))
    .bind(crate::projection::lock_name(store, projection))
    .fetch_optional(store.pool())
    .await
    .unwrap_or_else(|error| panic!("looking for the lock of `{projection}` failed: {error}"))
}

/// Takes the lock of `projection` away from the runner holding it, as a network cut or an
/// operator would: terminates the backend that holds it, and returns once the lock is gone.
/// The runner's next fenced commit then fails with `StoreError::LockLost`.
///
/// # Panics
///
/// When nobody holds the lock, or it is still held 10 s after the termination.
pub async fn break_lock(store: &PgStore, projection: &str) {
    let holder = lock_holder(store, projection)
        .await
        .unwrap_or_else(|| panic!("nobody holds the lock of `{projection}`"));
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(holder)
        .execute(store.pool())
        .await
        .unwrap_or_else(|error| panic!("terminating backend {holder} failed: {error}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lock_holder(store, projection).await == Some(holder) {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock of `{projection}` outlived its backend {holder}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drops the store's schema with everything in it.
///
/// # Panics
///
/// When the schema is not a test schema, or the server refuses.
pub async fn drop_schema(store: &PgStore) {
    let schema = store.schema();
    assert!(
        schema.starts_with(SCHEMA_PREFIX),
        "refusing to drop `{schema}`: not a test schema"
    );
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(store.pool())
        .await
        .unwrap_or_else(|error| panic!("dropping test schema `{schema}` failed: {error}"));
}

/// Drops test schemas older than [`STALE_AFTER`], left by earlier runs. Best effort: another
/// process may be dropping the same ones.
async fn drop_stale_schemas(pool: &PgPool) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let Ok(rows) =
        sqlx::query("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(SCHEMA_PREFIX)
            .fetch_all(pool)
            .await
    else {
        return;
    };
    for row in rows {
        let Ok(schema) = row.try_get::<String, _>(0) else {
            continue;
        };
        if crate::schema::validate(&schema).is_err() {
            continue;
        }
        let created = schema
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|seconds| seconds.parse::<u64>().ok());
        if created.is_some_and(|created| now.saturating_sub(created) > STALE_AFTER.as_secs()) {
            let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(pool)
                .await;
            if let Err(error) = dropped {
                tracing::debug!(schema = %schema, %error, "stale test schema not dropped");
            }
        }
    }
}
