//! Opening stores: the schema chosen before migration, migration on connect (and the opt-out),
//! isolation of two schemas in one database (each with its own migration history), idempotent
//! and concurrent migrations, and setup errors.

use es_core::conformance::events;
use es_core::{EventStore, ExpectedVersion, LogScope, Position, StoreError, StreamKey};
use es_postgres::{DEFAULT_SCHEMA, PgError, PgOptions, PgStore, testing};

fn key(id: &str) -> StreamKey<'_> {
    StreamKey::new("raw", id)
}

/// How many migrations the schema's history records as applied.
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
async fn two_schemas_in_one_database_are_separate_stores() {
    let pool = testing::pool().await;
    let billing = testing::store_on(pool.clone()).await;
    let shipping = testing::store_on(pool.clone()).await;
    billing
        .append(key("s"), ExpectedVersion::NoStream, events(1, 2))
        .await
        .unwrap();
    shipping
        .append(key("s"), ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    assert_eq!(billing.stream_version(key("s")).await.unwrap(), Some(2));
    assert_eq!(shipping.stream_version(key("s")).await.unwrap(), Some(1));
    let log = |store: PgStore| async move {
        store
            .read_all(LogScope::AllTenants, Position::START, 10)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(log(billing.clone()).await, 2);
    assert_eq!(log(shipping.clone()).await, 1);

    // Each schema keeps its own migration history, and migrating again changes nothing.
    billing.migrate().await.unwrap();
    for store in [&billing, &shipping] {
        assert_eq!(
            applied_migrations(store).await,
            5,
            "schema {}",
            store.schema()
        );
    }
    assert_eq!(
        billing.stream_version(key("s")).await.unwrap(),
        Some(2),
        "data kept"
    );
    assert_ne!(billing.channel(), shipping.channel());
}

/// `connect_with` migrates the schema it is given before it returns; with migration off it
/// leaves the database alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_migrates_the_chosen_schema_unless_told_not_to() {
    // Fails with the helper's message (how to start a server) when none answers.
    drop(testing::pool().await);
    let url = testing::database_url();
    let untouched = PgStore::connect_with(&url, testing::options().migrate(false))
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(untouched.schema())
            .fetch_one(untouched.pool())
            .await
            .unwrap();
    assert!(!exists, "migration off: no schema created");

    let options = testing::options().max_connections(3);
    let store = PgStore::connect_with(&url, options.clone()).await.unwrap();
    assert_eq!(store.options(), &options);
    assert_eq!(store.pool().options().get_max_connections(), 3);
    assert_eq!(applied_migrations(&store).await, 5);
    store
        .append(key("s"), ExpectedVersion::NoStream, events(1, 1))
        .await
        .expect("the migrated store appends at once");
    testing::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_a_new_schema() {
    let store = PgStore::with_options(testing::pool().await, testing::options());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .expect("every concurrent migration succeeds");
    }
    store
        .append(key("s"), ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    testing::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_are_validated_before_anything_connects() {
    let store = PgStore::new(testing::pool().await);
    assert_eq!(store.schema(), DEFAULT_SCHEMA);
    assert_eq!(store.channel(), "es_events");
    for bad in [
        "",
        "Billing",
        "a\"; DROP SCHEMA es; --",
        "pg_catalog",
        "9lives",
    ] {
        match PgOptions::new().schema(bad) {
            Err(PgError::InvalidSchema { schema, reason }) => {
                assert_eq!(schema, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    let store = PgStore::with_options(
        store.pool().clone(),
        PgOptions::new().schema("billing").unwrap(),
    );
    assert_eq!(
        (store.schema(), store.channel()),
        ("billing", "billing_events")
    );
}

/// A store on a pool of the caller's does not migrate by itself: until `migrate`, its
/// operations fail with a backend error naming the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_pool_of_yours_waits_for_migrate() {
    let store = PgStore::with_options(testing::pool().await, testing::options());
    let result = store
        .append(key("s"), ExpectedVersion::NoStream, events(1, 1))
        .await;
    match result {
        Err(error @ StoreError::Backend { .. }) => {
            assert!(
                error.to_string().contains("append to stream `raw/s`"),
                "{error}"
            );
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    store.migrate().await.unwrap();
    store
        .append(key("s"), ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    testing::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connections_are_connect_errors() {
    let base: String = testing::database_url();
    let (server, _) = base.rsplit_once('/').expect("the URL names a database");
    for url in [
        "not a url".to_owned(),
        format!("{server}/es_no_such_database"),
    ] {
        let result = PgStore::connect(&url).await;
        assert!(
            matches!(result, Err(PgError::Connect { .. })),
            "{url}: {result:?}"
        );
    }
}
