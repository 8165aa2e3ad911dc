//! The conformance suites on `MemoryStore`.

mod store {
    es_core::store_conformance_tests!(async { es_core::MemoryStore::new() });
}

mod projections {
    es_core::projection_conformance_tests!(async {
        es_core::conformance::projection::MemoryHarness::default()
    });
}

mod repository {
    es_core::repository_conformance_tests!(async { es_core::MemoryStore::new() });
}

mod inbox {
    es_core::inbox_conformance_tests!(async { es_core::MemoryStore::new() });
}
