//! A first look at speed: 2,000 single-event appends and loading a 10,000-event stream through
//! `PgStore`, next to the very same SQL run through plain sqlx; and what tenant isolation adds
//! to an append (a transaction scoped to the tenant: `BEGIN`, the setting, the statement,
//! `COMMIT`).
//!
//! ```text
//! cargo run --release -p es-postgres --example speed
//! ```
//!
//! Uses the server named by `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and a schema of its own, dropped at the end.

use std::time::{Duration, Instant};

use es_core::{
    Apply, EventStore, ExpectedVersion, NewEvent, RawJson, Repository, StreamKey, Until,
};
use es_postgres::{PgOptions, PgStore};
use futures_util::TryStreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const APPENDS: u64 = 2_000;
const STREAM_LENGTH: u64 = 10_000;
const ROUNDS: usize = 5;

/// Money came in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Deposited {
    amount: i64,
}

/// The account was opened.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Opened {
    owner: String,
}

#[derive(Debug, Clone, es_core::Event)]
enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
}

/// What a load folds: the balance.
#[derive(Debug, Default, es_core::Aggregate)]
#[aggregate(name = "account", event = AccountEvent)]
struct Account {
    balance: i64,
}

impl Apply<Opened> for Account {
    fn apply(&mut self, _: &Opened) {}
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

fn deposit() -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Deposited".to_owned(),
        schema_version: 1,
        payload: RawJson::from_string(r#"{"amount":1}"#),
        metadata: RawJson::from_string(r#"{"source":"speed"}"#),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let schema = format!("es_speed_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let options = PgOptions::new().schema(&schema)?;
    let store = PgStore::with_options(pool.clone(), options.clone());
    store.migrate().await?;
    // The same tables, every operation in a transaction scoped to its tenant.
    let isolated = PgStore::with_options(pool.clone(), options.tenant_isolation(true));
    let result = run(&store, &isolated).await;
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await?;
    result
}

async fn run(store: &PgStore, isolated: &PgStore) -> Result<(), Box<dyn std::error::Error>> {
    let pool = store.pool().clone();
    let schema = format!("\"{}\"", store.schema());
    let append_sql = include_str!("../src/sql/append.sql").replace("{schema}", &schema);
    let read_sql = format!(
        "SELECT tenant, stream_type, stream_id, stream_version, position, transaction_id::text, \
         event_id, event_type, schema_version, payload::text, metadata::text, recorded_at \
         FROM {schema}.events WHERE tenant = $1 AND stream_type = $2 AND stream_id = $3 \
         AND stream_version >= $4 ORDER BY stream_version"
    );

    // The least an append can be: one row, no checks, no notification.
    let insert_sql = format!(
        "INSERT INTO {schema}.events (tenant, stream_type, stream_id, stream_version, event_id, \
         event_type, schema_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb)"
    );

    let mut store_appends = Vec::new();
    let mut isolated_appends = Vec::new();
    let mut sqlx_appends = Vec::new();
    let mut bare_inserts = Vec::new();
    for round in 0..ROUNDS {
        // PgStore: input contract, the append statement, the reply decoded into a range.
        for (name, store, times) in [
            ("plain", store, &mut store_appends),
            ("isolated", isolated, &mut isolated_appends),
        ] {
            let id = format!("append-{name}-{round}");
            let stream = StreamKey::new("account", &id).in_tenant("acme");
            let started = Instant::now();
            for version in 0..APPENDS {
                store
                    .append(stream, ExpectedVersion::Exact(version), vec![deposit()])
                    .await?;
            }
            times.push(started.elapsed());
        }

        // Plain sqlx: the same statement, bound and executed by hand.
        let stream = format!("append-sqlx-{round}");
        let started = Instant::now();
        for version in 0..APPENDS {
            let event = deposit();
            sqlx::query(&append_sql)
                .bind("acme")
                .bind("account")
                .bind(&stream)
                .bind(vec![event.event_id])
                .bind(vec![event.event_type.as_str()])
                .bind(vec![i64::from(event.schema_version)])
                .bind(vec![event.payload.as_str()])
                .bind(vec![event.metadata.as_str()])
                .bind("exact")
                .bind(version as i64)
                .fetch_one(&pool)
                .await?;
        }
        sqlx_appends.push(started.elapsed());

        let stream = format!("append-insert-{round}");
        let started = Instant::now();
        for version in 0..APPENDS {
            let event = deposit();
            sqlx::query(&insert_sql)
                .bind("acme")
                .bind("account")
                .bind(&stream)
                .bind(version as i64 + 1)
                .bind(event.event_id)
                .bind(event.event_type.as_str())
                .bind(i64::from(event.schema_version))
                .bind(event.payload.as_str())
                .bind(event.metadata.as_str())
                .execute(&pool)
                .await?;
        }
        bare_inserts.push(started.elapsed());
    }

    // One account of 10,000 events, written in batches.
    let stream = StreamKey::new("account", "account-speed");
    let opened = NewEvent {
        event_type: "Opened".to_owned(),
        payload: RawJson::from_string(r#"{"owner":"speed"}"#),
        ..deposit()
    };
    store
        .append(stream, ExpectedVersion::NoStream, vec![opened])
        .await?;
    let mut written = 1;
    while written < STREAM_LENGTH {
        let batch: Vec<NewEvent> = (0..500.min(STREAM_LENGTH - written))
            .map(|_| deposit())
            .collect();
        written += batch.len() as u64;
        store.append(stream, ExpectedVersion::Any, batch).await?;
    }

    let accounts = Repository::<Account, _>::new(store.clone());
    let mut store_reads = Vec::new();
    let mut sqlx_reads = Vec::new();
    let mut loads = Vec::new();
    for _ in 0..ROUNDS {
        // PgStore: rows streamed and turned into `RecordedEvent`s.
        let started = Instant::now();
        let count = store
            .read_stream(stream, 1, Until::End)
            .try_fold(0u64, |count, _| async move { Ok(count + 1) })
            .await?;
        store_reads.push(started.elapsed());
        assert_eq!(count, STREAM_LENGTH);

        // Plain sqlx: the same query, each row's columns decoded into owned values.
        let started = Instant::now();
        let mut rows = sqlx::query(&read_sql)
            .bind(stream.tenant)
            .bind(stream.stream_type)
            .bind(stream.id)
            .bind(1i64)
            .fetch(&pool);
        let mut count = 0u64;
        while let Some(row) = rows.try_next().await? {
            let decoded = (
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<String, _>(2)?,
                row.try_get::<i64, _>(3)?,
                row.try_get::<i64, _>(4)?,
                row.try_get::<String, _>(5)?,
                row.try_get::<Uuid, _>(6)?,
                row.try_get::<String, _>(7)?,
                row.try_get::<i64, _>(8)?,
                row.try_get::<String, _>(9)?,
                row.try_get::<String, _>(10)?,
                row.try_get::<chrono::DateTime<chrono::Utc>, _>(11)?,
            );
            std::hint::black_box(decoded);
            count += 1;
        }
        drop(rows);
        sqlx_reads.push(started.elapsed());
        assert_eq!(count, STREAM_LENGTH);

        // The repository: the store's replay, each payload decoded and applied.
        let started = Instant::now();
        let loaded = accounts.load(stream.id).await?;
        loads.push(started.elapsed());
        assert_eq!(loaded.state.balance, (STREAM_LENGTH - 1) as i64);
    }

    println!("PostgreSQL store, {ROUNDS} rounds (best of them in brackets)");
    let rows: [(String, &[Duration], u64); 7] = [
        (
            format!("{APPENDS} single-event appends, PgStore"),
            &store_appends,
            APPENDS,
        ),
        (
            format!("{APPENDS} single-event appends, tenant isolation"),
            &isolated_appends,
            APPENDS,
        ),
        (
            format!("{APPENDS} single-event appends, plain sqlx"),
            &sqlx_appends,
            APPENDS,
        ),
        (
            format!("{APPENDS} bare one-row INSERTs, plain sqlx"),
            &bare_inserts,
            APPENDS,
        ),
        (
            format!("read a {STREAM_LENGTH}-event stream, PgStore"),
            &store_reads,
            STREAM_LENGTH,
        ),
        (
            format!("read a {STREAM_LENGTH}-event stream, plain sqlx"),
            &sqlx_reads,
            STREAM_LENGTH,
        ),
        (
            format!("load a {STREAM_LENGTH}-event account, Repository"),
            &loads,
            STREAM_LENGTH,
        ),
    ];
    for (what, times, items) in rows {
        report(&what, times, items);
    }
    Ok(())
}

fn report(what: &str, times: &[Duration], items: u64) {
    let rounds: Vec<String> = times
        .iter()
        .map(|t| format!("{:.1} ms", t.as_secs_f64() * 1e3))
        .collect();
    let best = times.iter().min().copied().unwrap_or_default();
    println!(
        "  {what:<48} {}  [{:.1} ms, {:.1} us each]",
        rounds.join(", "),
        best.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e6 / items as f64
    );
}
