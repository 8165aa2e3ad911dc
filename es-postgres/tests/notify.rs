//! Live notification: appends notify `store.channel()` after they commit (from the store's
//! background notifier, outside the appending transaction), and coalescing under load never
//! drops the wake-up that follows the last commit.

use std::time::Duration;

use es_core::conformance::events;
use es_core::{EventStore, ExpectedVersion, StreamKey};
use es_postgres::testing;
use sqlx::postgres::PgListener;

/// How long a notification may take to arrive before the test gives up.
const PATIENCE: Duration = Duration::from_secs(10);

/// The payload the test's trigger sends from every appending transaction (the store's own
/// notifications have an empty payload).
const COMMITTED: &str = "committed";

/// A listener on the store's channel is woken after an append, by a notification sent outside
/// the appending transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_is_woken_after_an_append() {
    let store = testing::store().await;
    let mut listener = PgListener::connect_with(store.pool()).await.unwrap();
    listener.listen(store.channel()).await.unwrap();

    store
        .append(
            StreamKey::new("raw", "s"),
            ExpectedVersion::NoStream,
            events(1, 1),
        )
        .await
        .unwrap();
    let notification = tokio::time::timeout(PATIENCE, listener.recv())
        .await
        .expect("a notification after the append")
        .unwrap();
    assert_eq!(notification.channel(), store.channel());
    assert_eq!(notification.payload(), "");

    // A re-sent batch (already appended) writes nothing and is not announced.
    let batch = events(2, 1);
    store
        .append(
            StreamKey::new("raw", "s"),
            ExpectedVersion::Exact(1),
            batch.clone(),
        )
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, listener.recv())
        .await
        .expect("a notification after the second append")
        .unwrap();
    store
        .append(StreamKey::new("raw", "s"), ExpectedVersion::Exact(1), batch)
        .await
        .unwrap();
    let extra = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(
        extra.is_err(),
        "an already appended batch notified: {extra:?}"
    );
}

/// Many concurrent appends: the notifier coalesces their signals, yet one of its notifications
/// follows the last commit.
///
/// A trigger of the test's makes every appending transaction notify too (payload `committed`).
/// PostgreSQL delivers notifications in the commit order of the transactions that sent them, so
/// the listener sees the commits and the store's notifications (empty payload) interleaved as
/// they happened: after the last `committed` there must be a store notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_commit_is_always_followed_by_a_notification() {
    const TASKS: u64 = 8;
    const BURSTS: u64 = 200;
    let store = testing::store().await;
    let schema = store.schema();
    sqlx::query(&format!(
        "CREATE FUNCTION \"{schema}\".announce_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify(TG_ARGV[0], '{COMMITTED}'); RETURN NULL; END $$"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER announce_commit AFTER INSERT ON \"{schema}\".events \
         FOR EACH STATEMENT EXECUTE FUNCTION \"{schema}\".announce_commit('{}')",
        store.channel()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let mut listener = PgListener::connect_with(store.pool()).await.unwrap();
    listener.listen(store.channel()).await.unwrap();

    // Bursts of concurrent appends: their signals find a notify in flight and coalesce. After
    // each burst, the listener reads on until a store notification follows the last commit.
    let (mut commits, mut notifications, mut since_last_commit) = (0, 0, 0);
    for burst in 1..=BURSTS {
        let writers: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append(
                            StreamKey::new("raw", &format!("s-{task}")),
                            ExpectedVersion::Exact(burst - 1),
                            events(burst * TASKS + task, 1),
                        )
                        .await
                        .unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        while commits < burst * TASKS || since_last_commit == 0 {
            let notification = tokio::time::timeout(PATIENCE, listener.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "burst {burst}: no store notification after the last of {commits} commits \
                         ({notifications} store notifications so far)"
                    )
                })
                .unwrap();
            match notification.payload() {
                COMMITTED => {
                    commits += 1;
                    since_last_commit = 0;
                }
                "" => {
                    notifications += 1;
                    since_last_commit += 1;
                }
                other => panic!("unexpected payload `{other}`"),
            }
        }
    }
    assert!(
        notifications <= commits,
        "{notifications} notifications for {commits} commits"
    );
}
