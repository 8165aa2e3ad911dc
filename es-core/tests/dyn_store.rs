//! The conformance suites on a `MemoryStore` erased behind `DynStore`: the erased store
//! behaves as the store it was made from.

use es_core::conformance::projection::{DynHarness, MemoryHarness};
use es_core::{DynStore, MemoryStore};

mod store {
    use super::*;
    es_core::store_conformance_tests!(async { DynStore::new(MemoryStore::new()) });
}

mod projections {
    use super::*;
    es_core::projection_conformance_tests!(async { DynHarness::new(MemoryHarness::default()) });
}

mod repository {
    use super::*;
    es_core::repository_conformance_tests!(async { DynStore::new(MemoryStore::new()) });
}

mod inbox {
    use super::*;
    es_core::inbox_conformance_tests!(async { DynStore::new_with_inbox(MemoryStore::new()) });
}

#[tokio::test]
async fn a_store_without_sql_refuses_statements_and_the_store_inside_can_be_reached() {
    use es_core::projection::ProjectionStore;
    use es_core::sql::SqlStore;
    let memory = MemoryStore::new();
    let store = DynStore::new(memory.clone());
    assert!(store.downcast_ref::<MemoryStore>().is_some());
    let mut transaction = store.begin(es_core::LogScope::AllTenants).await.unwrap();
    let refused = DynStore::execute(&mut transaction, "SELECT 1", &[]).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("not a SQL store"), "{message}");
    assert!(
        transaction
            .downcast_mut::<es_core::MemoryTransaction>()
            .is_some()
    );
}
