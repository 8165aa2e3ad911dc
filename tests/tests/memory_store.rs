//! The store conformance suite on `MemoryStore`.

es_core::store_conformance_tests!(async { es_core::MemoryStore::new() });
