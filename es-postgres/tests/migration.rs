//! Upgrading a schema written before streams were keyed by tenant: the tables as migrations
//! 0001-0003 left them, with data, migrate to the tenant keys without losing anything, everything
//! under tenant `default`, and the old aggregates load.

mod common;

use std::borrow::Cow;

use es_core::conformance::events;
use es_core::projection::ProjectionStore;
use es_core::{
    CommandContext, EventStore, ExpectedVersion, LogScope, Position, Repository, StreamKey, Until,
};
use es_examples::bank::{Account, Deposit};
use es_postgres::{PgError, PgStore, testing};
use futures_util::TryStreamExt;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

/// How many migrations the schema had before streams were keyed by tenant.
const BEFORE_TENANTS: i64 = 3;

/// A store whose schema holds the tables of migrations 0001-0003 only, recorded in
/// `_sqlx_migrations` by sqlx itself, as an earlier version of this crate left them. Returns the
/// store (not migrated further) and a connection whose search path is its schema.
async fn schema_before_tenants(pool: &PgPool) -> (PgStore, PgConnection) {
    let store = PgStore::with_options(pool.clone(), testing::options());
    let mut connection = pool.acquire().await.unwrap().detach();
    let schema = format!("\"{}\"", store.schema());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::query(&format!("SET search_path TO {schema}"))
        .execute(&mut connection)
        .await
        .unwrap();
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations = Cow::Owned(
        migrator
            .iter()
            .filter(|migration| migration.version <= BEFORE_TENANTS)
            .cloned()
            .collect(),
    );
    assert_eq!(migrator.iter().count(), BEFORE_TENANTS as usize);
    migrator.set_locking(false);
    migrator.run_direct(&mut connection).await.unwrap();
    (store, connection)
}

/// Inserts an event as the old store did: no tenant. Returns its id.
async fn old_event(
    connection: &mut PgConnection,
    stream_type: &str,
    stream_id: &str,
    version: i64,
    event_type: &str,
    payload: &str,
) -> Uuid {
    let event_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (stream_type, stream_id, stream_version, event_id, event_type, \
           schema_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, 1, $6::jsonb, '{\"source\": \"before tenants\"}')",
    )
    .bind(stream_type)
    .bind(stream_id)
    .bind(version)
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .execute(connection)
    .await
    .unwrap();
    event_id
}

async fn applied_migrations(store: &PgStore) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\"._sqlx_migrations WHERE success",
        store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_before_tenants_migrates_everything_into_the_default_tenant() {
    let pool = testing::pool().await;
    let (store, mut old) = schema_before_tenants(&pool).await;
    let mut ids = Vec::new();
    for (stream, version, event_type, payload) in [
        ("account-1", 1, "Opened", r#"{"owner": "ada"}"#),
        ("account-2", 1, "Opened", r#"{"owner": "bob"}"#),
        ("account-1", 2, "Deposited", r#"{"amount": 30}"#),
        ("account-1", 3, "Deposited", r#"{"amount": 12}"#),
        ("account-2", 2, "Deposited", r#"{"amount": 5}"#),
    ] {
        ids.push(old_event(&mut old, "account", stream, version, event_type, payload).await);
    }
    let positions: Vec<(String, i64)> =
        sqlx::query_as("SELECT transaction_id::text, position FROM events ORDER BY position")
            .fetch_all(&mut old)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO snapshots (stream_id, stream_type, stream_version, state_version, state, \
           taken_at) \
         VALUES ('account-1', 'account', 2, 1, \
           '{\"open\": true, \"owner\": \"ada\", \"balance\": 30, \"movements\": 1}', now())",
    )
    .execute(&mut old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, transaction_id, position) \
         VALUES ('balances', $1::xid8, $2)",
    )
    .bind(&positions[2].0)
    .bind(positions[2].1)
    .execute(&mut old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO dead_letters (projection, transaction_id, position, event_id, stream_id, \
           stream_version, event_type, error, attempts, parked_at) \
         VALUES ('balances', $1::xid8, $2, $3, 'account-2', 2, 'Deposited', 'it failed', 3, now())",
    )
    .bind(&positions[4].0)
    .bind(positions[4].1)
    .bind(ids[4])
    .execute(&mut old)
    .await
    .unwrap();
    old.close().await.unwrap();

    store.migrate().await.expect("the old schema migrates");
    assert_eq!(applied_migrations(&store).await, 5);

    // Every row is the default tenant's, positions untouched.
    let tenants: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT tenant FROM \"{}\".events",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(tenants, ["default"]);
    let log = store
        .read_all(LogScope::AllTenants, Position::START, 100)
        .await
        .unwrap();
    assert_eq!(log.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    for (event, (transaction, sequence)) in log.iter().zip(&positions) {
        assert_eq!(
            (
                event.position.transaction.to_string(),
                event.position.sequence
            ),
            (transaction.clone(), *sequence as u64)
        );
        assert_eq!(event.tenant, "default");
        assert_eq!(
            event.metadata.to_value().unwrap()["source"],
            "before tenants"
        );
    }
    assert_eq!(
        store
            .read_all(LogScope::Tenant("default"), Position::START, 100)
            .await
            .unwrap(),
        log
    );
    let account_1 = StreamKey::new("account", "account-1");
    let stream: Vec<_> = store
        .read_stream(account_1, 1, Until::End)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        stream.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    let snapshot = store
        .load_snapshot(account_1)
        .await
        .unwrap()
        .expect("the old snapshot is the default tenant's");
    assert_eq!(
        (snapshot.tenant.as_str(), snapshot.stream_version),
        ("default", 2)
    );
    let checkpoint = store.load_checkpoint("balances").await.unwrap();
    assert_eq!(checkpoint, Some(log[2].position));
    let parked = store.dead_letters("balances").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (
            parked[0].tenant.as_str(),
            parked[0].stream_type.as_str(),
            parked[0].stream_id.as_str(),
            parked[0].position,
            parked[0].attempts
        ),
        ("default", "account", "account-2", log[4].position, 3)
    );

    // The old aggregates load and take new commands where they stopped.
    let accounts = Repository::<Account, _>::new(store.clone());
    let loaded = accounts.load("account-1").await.unwrap();
    assert_eq!(
        (
            loaded.state.owner.as_str(),
            loaded.state.balance,
            loaded.version
        ),
        ("ada", 42, 3)
    );
    assert_eq!(accounts.load("account-2").await.unwrap().state.balance, 5);
    let executed = accounts
        .execute("account-1", &Deposit(8), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!(executed.version, 4);
    // The same id in another tenant is another stream.
    store
        .append(
            account_1.in_tenant("acme"),
            ExpectedVersion::NoStream,
            events(1, 1),
        )
        .await
        .unwrap();

    // The keys and the tenant log's index are in place, and the tenant has no default.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'events' \
         ORDER BY indexname",
    )
    .bind(store.schema())
    .fetch_all(store.pool())
    .await
    .unwrap();
    for expected in [
        "(event_id)",
        "(transaction_id, \"position\")",
        "(tenant, stream_type, stream_id, stream_version)",
        "(tenant, transaction_id, \"position\")",
    ] {
        assert!(
            indexes.iter().any(|index| index.ends_with(expected)),
            "no index on {expected}: {indexes:#?}"
        );
    }
    let without_tenant = sqlx::query(&format!(
        "INSERT INTO \"{}\".events (stream_type, stream_id, stream_version, event_id, \
           event_type, schema_version, payload, metadata) \
         VALUES ('account', 'account-9', 1, $1, 'Opened', 1, '{{}}', '{{}}')",
        store.schema()
    ))
    .bind(Uuid::new_v4())
    .execute(store.pool())
    .await;
    match without_tenant {
        Err(sqlx::Error::Database(error)) => assert_eq!(error.code().as_deref(), Some("23502")),
        other => panic!("an event without a tenant was stored: {other:?}"),
    }
    testing::drop_schema(&store).await;
}

/// A stream id stored under two stream types would become two streams with gaps: the migration
/// refuses such a log, changes nothing, and says how to find the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_under_two_stream_types_stops_the_migration() {
    let pool = testing::pool().await;
    let (store, mut old) = schema_before_tenants(&pool).await;
    old_event(&mut old, "order", "42", 1, "Placed", "{}").await;
    old_event(&mut old, "invoice", "42", 2, "Issued", "{}").await;
    old.close().await.unwrap();

    match store.migrate().await {
        Err(error @ PgError::Migrate { .. }) => {
            let message = format!("{error}: {:?}", std::error::Error::source(&error));
            assert!(message.contains("more than one stream type"), "{message}");
        }
        other => panic!("the migration went through: {other:?}"),
    }
    assert_eq!(applied_migrations(&store).await, BEFORE_TENANTS);
    let has_tenant: bool = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'events' AND column_name = 'tenant')",
    )
    .bind(store.schema())
    .fetch_one(store.pool())
    .await
    .unwrap()
    .get(0);
    assert!(!has_tenant, "the failed migration changed nothing");
    testing::drop_schema(&store).await;
}
