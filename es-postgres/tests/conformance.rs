//! The conformance suites of es-core on `PgStore`, each case in a fresh schema: the event store
//! suite, the repository and SQL suites, also through `DynStore`, and the projection suite with a read model in a table of the test's schema; then both
//! again with tenant isolation on, where every operation on a tenant's data runs in a
//! transaction scoped to the tenant (as the superuser the tests connect as, which row level
//! security never binds: `tests/tenant_isolation.rs` shows the policies at work).

use es_core::RecordedEvent;
use es_core::conformance::projection::ProjectionHarness;
use es_core::projection::HandlerError;
use es_postgres::sqlx::{self, Postgres};
use es_postgres::{PgStore, testing};
use uuid::Uuid;

mod store {
    es_core::store_conformance_tests!(async { es_postgres::testing::store().await });
}

mod projections {
    es_core::projection_conformance_tests!(super::PgHarness::new(false));
}

mod repository {
    es_core::repository_conformance_tests!(async { es_postgres::testing::store().await });
}

mod sql {
    es_core::sql_conformance_tests!(async { es_postgres::testing::store().await });
}

mod inbox {
    es_core::inbox_conformance_tests!(async { es_postgres::testing::store().await });
}

mod consumer {
    es_core::sql_consumer_conformance_tests!(async { es_postgres::testing::store().await });
}

/// The store chosen at run time: the same suites through `DynStore`.
mod erased {
    use es_core::DynStore;
    use es_core::conformance::projection::DynHarness;

    mod store {
        es_core::store_conformance_tests!(async {
            super::DynStore::new_sql(es_postgres::testing::store().await)
        });
    }

    mod projections {
        es_core::projection_conformance_tests!(async {
            super::DynHarness::new(crate::PgHarness::new(false).await)
        });
    }

    mod sql {
        es_core::sql_conformance_tests!(async {
            super::DynStore::new_sql(es_postgres::testing::store().await)
        });
    }

    mod inbox {
        es_core::inbox_conformance_tests!(async {
            super::DynStore::new_sql_with_inbox(es_postgres::testing::store().await)
        });
    }

    mod consumer {
        es_core::sql_consumer_conformance_tests!(async {
            super::DynStore::new_sql_with_inbox(es_postgres::testing::store().await)
        });
    }
}

mod isolated_inbox {
    es_core::inbox_conformance_tests!(async {
        let options = es_postgres::testing::options().tenant_isolation(true);
        es_postgres::testing::store_with(es_postgres::testing::pool().await, options).await
    });
}

mod isolated_store {
    es_core::store_conformance_tests!(async {
        let options = es_postgres::testing::options().tenant_isolation(true);
        es_postgres::testing::store_with(es_postgres::testing::pool().await, options).await
    });
}

mod isolated_projections {
    es_core::projection_conformance_tests!(super::PgHarness::new(true));
}

/// The projection suite's harness: a store in a fresh schema, whose read model is the table
/// `recorded` of that schema, written through the runner's transaction.
#[derive(Debug)]
struct PgHarness {
    store: PgStore,
    table: String,
}

impl PgHarness {
    async fn new(tenant_isolation: bool) -> Self {
        let options = testing::options().tenant_isolation(tenant_isolation);
        let store = testing::store_with(testing::pool().await, options).await;
        let table = format!("\"{}\".recorded", store.schema());
        // `seq` keeps the order of the records: a projection's commits are serialized by its
        // lock, so insert order is the order in which events were handled.
        sqlx::query(&format!(
            "CREATE TABLE {table} (seq bigserial PRIMARY KEY, projection text NOT NULL, \
             event_id uuid NOT NULL)"
        ))
        .execute(store.pool())
        .await
        .expect("the read model's table is created");
        Self { store, table }
    }
}

impl ProjectionHarness for PgHarness {
    type Store = PgStore;

    fn store(&self) -> PgStore {
        self.store.clone()
    }

    /// A store on a pool of its own, on the same schema: another process.
    async fn other_instance(&self) -> PgStore {
        PgStore::with_options(testing::pool().await, self.store.options().clone())
    }

    async fn record(
        &self,
        transaction: &mut sqlx::Transaction<'static, Postgres>,
        projection: &str,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(&format!(
            "INSERT INTO {} (projection, event_id) VALUES ($1, $2)",
            self.table
        ))
        .bind(projection)
        .bind(event.event_id)
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }

    async fn clear(
        &self,
        transaction: &mut sqlx::Transaction<'static, Postgres>,
        projection: &str,
    ) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {} WHERE projection = $1", self.table))
            .bind(projection)
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn recorded(&self, projection: &str) -> Vec<Uuid> {
        sqlx::query_scalar(&format!(
            "SELECT event_id FROM {} WHERE projection = $1 ORDER BY seq",
            self.table
        ))
        .bind(projection)
        .fetch_all(self.store.pool())
        .await
        .expect("the read model reads")
    }

    async fn break_lock(&self, projection: &str) {
        testing::break_lock(&self.store, projection).await;
    }
}
