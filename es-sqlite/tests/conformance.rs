//! The store conformance suite on `SqliteStore`: every case on its own fresh file.

mod common;

es_core::store_conformance_tests!(async { common::TempStore::new().await });
