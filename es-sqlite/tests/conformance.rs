//! The conformance suites on `SqliteStore`: every case on its own fresh file.

mod common;

mod store {
    es_core::store_conformance_tests!(async { super::common::TempStore::new().await });
}

mod projections {
    es_core::projection_conformance_tests!(super::SqliteHarness::new());
}

mod repository {
    es_core::repository_conformance_tests!(async { super::common::TempStore::new().await });
}

/// The SQL suite's cases, each holding its temporary file for as long as it runs; once on the
/// store and once on the store behind a `DynStore`.
mod sql {
    use es_core::DynStore;
    use es_core::conformance::sql;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_round_trip() {
        let temp = super::common::TempStore::new().await;
        sql::values_round_trip(temp.store.clone()).await;
        sql::values_round_trip(DynStore::new_sql(temp.store.clone())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolled_back_statements_leave_nothing() {
        let temp = super::common::TempStore::new().await;
        sql::rolled_back_statements_leave_nothing(temp.store.clone()).await;
        sql::rolled_back_statements_leave_nothing(DynStore::new_sql(temp.store.clone())).await;
    }
}

/// The inbox suite's cases, each holding its temporary file for as long as it runs; once on
/// the store and once on the store behind a `DynStore`.
mod inbox {
    use es_core::DynStore;
    use es_core::conformance::inbox;

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let temp = super::common::TempStore::new().await;
                    inbox::$case(temp.store.clone()).await;
                    inbox::$case(DynStore::new_sql_with_inbox(temp.store.clone())).await;
                }
            )*
        };
    }

    cases!(
        an_event_is_new_once,
        a_rolled_back_record_is_forgotten,
        inboxes_are_per_consumer_and_across_tenants,
        racing_transactions_record_an_event_once,
    );
}

use std::time::Duration;

use common::TempStore;
use es_core::conformance::projection::ProjectionHarness;
use es_core::projection::{HandlerError, ProjectionStore};
use es_core::{LogScope, RecordedEvent};
use es_sqlite::{SqliteOptions, SqliteStore};
use sqlx::Row;
use uuid::Uuid;

/// The projection suite's view of SQLite: a store on a temporary file, a second
/// `SqliteStore::open` of that file as another process, and a read model table in the same
/// file written through the runner's transaction.
#[derive(Debug)]
struct SqliteHarness {
    temp: TempStore,
}

impl SqliteHarness {
    /// A short lease, so that a lock taken away is taken over within a second, and fast polling,
    /// so that another instance's appends are seen soon.
    fn options() -> SqliteOptions {
        SqliteOptions::new()
            .lock_lease(Duration::from_secs(1))
            .max_poll_interval(Duration::from_millis(50))
    }

    async fn new() -> Self {
        let temp = TempStore::with_options(Self::options()).await;
        sqlx::query(
            "CREATE TABLE conformance_read_model (\
               projection TEXT NOT NULL, \
               event_id TEXT NOT NULL, \
               seq INTEGER PRIMARY KEY AUTOINCREMENT)",
        )
        .execute(temp.store.pool())
        .await
        .expect("the read model's table is created");
        Self { temp }
    }
}

impl ProjectionHarness for SqliteHarness {
    type Store = SqliteStore;

    fn store(&self) -> SqliteStore {
        self.temp.store.clone()
    }

    async fn other_instance(&self) -> SqliteStore {
        self.temp.second_instance(Self::options()).await
    }

    async fn record(
        &self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        projection: &str,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO conformance_read_model (projection, event_id) VALUES (?1, ?2)")
            .bind(projection)
            .bind(event.event_id.to_string())
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn clear(
        &self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        projection: &str,
    ) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM conformance_read_model WHERE projection = ?1")
            .bind(projection)
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn recorded(&self, projection: &str) -> Vec<Uuid> {
        sqlx::query(
            "SELECT event_id FROM conformance_read_model WHERE projection = ?1 ORDER BY seq",
        )
        .bind(projection)
        .fetch_all(self.temp.store.pool())
        .await
        .expect("the read model reads")
        .iter()
        .map(|row| {
            let id: String = row.get("event_id");
            Uuid::parse_str(&id).expect("the read model holds event ids")
        })
        .collect()
    }

    /// Gives the lock row to another owner with a fresh heartbeat, as a runner of another
    /// process that took over an expired lease would have. The update runs in a transaction
    /// from [`ProjectionStore::begin`], which takes its turn among this store's writers: a
    /// runner catching up begins its batches back to back, and a write from outside the queue
    /// would only land between two of them by chance.
    async fn break_lock(&self, projection: &str) {
        let store = &self.temp.store;
        let mut transaction = store
            .begin(LogScope::AllTenants)
            .await
            .expect("a write transaction");
        let taken = sqlx::query(
            "UPDATE es_projection_locks SET owner = 'another process', lease_id = ?2, heartbeat_at = ?3 \
             WHERE projection = ?1",
        )
        .bind(projection)
        .bind(Uuid::new_v4().to_string())
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(&mut *transaction)
        .await
        .expect("the lock row is updated");
        store.commit(transaction).await.expect("the update commits");
        assert_eq!(taken.rows_affected(), 1, "a runner held `{projection}`");
    }
}

/// The SQL consumer suite's cases, each holding its temporary file for as long as it runs; once
/// on the store and once on the store behind a `DynStore`.
mod consumer {
    use es_core::DynStore;
    use es_core::conformance::consumer;

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let temp = super::common::TempStore::new().await;
                    consumer::$case(temp.store.clone()).await;
                    let temp = super::common::TempStore::new().await;
                    consumer::$case(DynStore::new_sql_with_inbox(temp.store.clone())).await;
                }
            )*
        };
    }

    cases!(
        a_consumers_writes_and_its_inbox_commit_together,
        a_relay_keeps_its_checkpoint_and_lock_in_the_store,
    );
}
