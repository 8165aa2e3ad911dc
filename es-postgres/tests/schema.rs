//! The configurable schema: validation, isolation of two schemas in one database (each with its
//! own migration history), idempotent and concurrent migrations, and setup errors.

use es_core::conformance::events;
use es_core::{EventStore, ExpectedVersion, Position, StoreError};
use es_postgres::{DEFAULT_SCHEMA, PgError, PgStore, testing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schemas_in_one_database_are_separate_stores() {
    let pool = testing::pool().await;
    let billing = testing::store_on(pool.clone()).await;
    let shipping = testing::store_on(pool.clone()).await;
    billing
        .append("raw", "s", ExpectedVersion::NoStream, events(1, 2))
        .await
        .unwrap();
    shipping
        .append("raw", "s", ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    assert_eq!(billing.stream_version("s").await.unwrap(), Some(2));
    assert_eq!(shipping.stream_version("s").await.unwrap(), Some(1));
    assert_eq!(
        billing.read_all(Position::START, 10).await.unwrap().len(),
        2
    );
    assert_eq!(
        shipping.read_all(Position::START, 10).await.unwrap().len(),
        1
    );

    // Each schema keeps its own migration history, and migrating again changes nothing.
    billing.migrate().await.unwrap();
    for store in [&billing, &shipping] {
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\"._sqlx_migrations WHERE success",
            store.schema()
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(applied, 3, "schema {}", store.schema());
    }
    assert_eq!(
        billing.stream_version("s").await.unwrap(),
        Some(2),
        "data kept"
    );
    assert_ne!(billing.channel(), shipping.channel());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_a_new_schema() {
    let pool = testing::pool().await;
    let store = PgStore::new(pool)
        .with_schema(&testing::fresh_schema_name())
        .unwrap();
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
        .append("raw", "s", ExpectedVersion::NoStream, events(1, 1))
        .await
        .unwrap();
    testing::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_names_are_validated() {
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
        match store.clone().with_schema(bad) {
            Err(PgError::InvalidSchema { schema, reason }) => {
                assert_eq!(schema, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    let store = store.with_schema("billing").unwrap();
    assert_eq!(
        (store.schema(), store.channel()),
        ("billing", "billing_events")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_schema_is_a_backend_error() {
    let store = PgStore::new(testing::pool().await)
        .with_schema(&testing::fresh_schema_name())
        .unwrap();
    let result = store
        .append("raw", "s", ExpectedVersion::NoStream, events(1, 1))
        .await;
    match result {
        Err(error @ StoreError::Backend { .. }) => {
            assert!(
                error.to_string().contains("append to stream `s`"),
                "{error}"
            );
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
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
