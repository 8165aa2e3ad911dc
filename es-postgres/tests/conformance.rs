//! The store conformance suite of es-core on `PgStore`, each case in a fresh schema.

es_core::store_conformance_tests!(async { es_postgres::testing::store().await });
