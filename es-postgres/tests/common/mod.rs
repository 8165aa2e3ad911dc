//! Helpers shared by the test files: raw SQL on a store's tables (to play writers the store does
//! not control), and a small seeded random generator. The aggregate of the tests is the
//! examples' bank account (`es_examples::bank`).

#![allow(dead_code)] // Each test file uses its own part.

use std::time::Duration;

use es_core::StreamKey;
use es_postgres::PgStore;
use sqlx::PgConnection;
use uuid::Uuid;

/// Inserts one event row by hand, as a writer in `connection`'s transaction would, bypassing the
/// store: the row gets the writing transaction's id and the next position like any other.
/// Returns the event id.
pub(crate) async fn raw_insert(
    connection: &mut PgConnection,
    store: &PgStore,
    stream: StreamKey<'_>,
    version: i64,
    n: i64,
) -> Uuid {
    let event_id = Uuid::new_v4();
    raw_insert_row(
        connection,
        store,
        stream,
        version,
        event_id,
        "Tested",
        1,
        &format!("{{\"n\": {n}}}"),
    )
    .await;
    event_id
}

/// Inserts one event row by hand with every field chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn raw_insert_row(
    connection: &mut PgConnection,
    store: &PgStore,
    stream: StreamKey<'_>,
    version: i64,
    event_id: Uuid,
    event_type: &str,
    schema_version: i64,
    payload: &str,
) {
    sqlx::query(&format!(
        "INSERT INTO \"{}\".events \
           (tenant, stream_type, stream_id, stream_version, event_id, event_type, schema_version, \
            payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, '{{}}')",
        store.schema()
    ))
    .bind(stream.tenant)
    .bind(stream.stream_type)
    .bind(stream.id)
    .bind(version)
    .bind(event_id)
    .bind(event_type)
    .bind(schema_version)
    .bind(payload)
    .execute(connection)
    .await
    .unwrap_or_else(|error| panic!("raw insert into `{stream}` failed: {error}"));
}

/// The backend process id of a connection.
pub(crate) async fn backend_pid(connection: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(connection)
        .await
        .expect("pg_backend_pid works")
}

/// Polls `look` every 10 ms until it yields a value, for at most 10 s.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = look().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A xorshift generator: enough randomness for delays and choices, seeded per test and printed
/// so a failing run can be replayed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `ES_TEST_SEED` if set, else randomly; prints the seed.
    pub(crate) fn from_env(test: &str) -> Self {
        let seed = std::env::var("ES_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| Uuid::new_v4().as_u64_pair().0 | 1);
        println!("{test}: ES_TEST_SEED={seed}");
        Self(seed)
    }

    pub(crate) fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..bound`.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// A pause of up to `max_ms` milliseconds.
    pub(crate) fn pause(&mut self, max_ms: u64) -> Duration {
        Duration::from_micros(self.below(max_ms * 1000 + 1))
    }
}
