//! Where a workload runs: a fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards.
//! The framework's store and the baseline share that database (and its connection pool), each
//! with stream ids of its own.

use std::path::PathBuf;

use es_postgres::{PgOptions, PgStore};
use es_sqlite::SqliteStore;
use tempfile::TempDir;

use crate::BenchError;
use crate::baseline::Baseline;

/// The database server or directory the run uses.
#[derive(Debug)]
pub(crate) enum Target {
    Sqlite { dir: TempDir },
    Postgres { store: PgStore },
}

/// The framework's store on one fresh database.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// One fresh database: the store, the baseline on the same tables, and what to remove after.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) store: Store,
    pub(crate) baseline: Baseline,
    files: Vec<PathBuf>,
}

impl Target {
    /// Temporary SQLite files, one per workload, in a directory removed at exit.
    pub(crate) fn sqlite() -> Result<Self, BenchError> {
        Ok(Target::Sqlite {
            dir: tempfile::Builder::new().prefix("es-bench-").tempdir()?,
        })
    }

    /// A pool of 10 connections (the store's default) on the server at `url`. Without TLS
    /// unless `url` names an `sslmode`: the figures are the database's, not the cipher's.
    pub(crate) async fn postgres(url: &str) -> Result<Self, BenchError> {
        let url = if url.contains("sslmode=") {
            url.to_owned()
        } else {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}sslmode=disable")
        };
        let url = url.as_str();
        // Only its pool is used: each workload opens a store on a fresh schema of its own.
        let store = PgStore::connect_with(url, PgOptions::new().migrate(false))
            .await
            .map_err(|error| format!("cannot connect to {url}: {error}"))?;
        Ok(Target::Postgres { store })
    }

    /// What the table header says.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Sqlite { .. } => {
                "SQLite (bundled, WAL, synchronous=NORMAL), a fresh temporary file per workload"
                    .to_owned()
            }
            Target::Postgres { .. } => {
                "PostgreSQL, a fresh schema per workload (dropped after)".to_owned()
            }
        }
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Target::Postgres { .. })
    }

    /// A fresh, migrated database named after `workload`.
    pub(crate) async fn fresh(&self, workload: &str) -> Result<Db, BenchError> {
        let name = workload.to_lowercase();
        match self {
            Target::Sqlite { dir } => {
                let path = dir.path().join(format!("{name}.db"));
                let files = ["", "-wal", "-shm"]
                    .iter()
                    .map(|suffix| {
                        let mut file = path.clone().into_os_string();
                        file.push(suffix);
                        PathBuf::from(file)
                    })
                    .collect::<Vec<_>>();
                for file in &files {
                    let _ = std::fs::remove_file(file);
                }
                let store = SqliteStore::open(&path).await?;
                let baseline = Baseline::sqlite(store.pool().clone());
                Ok(Db {
                    store: Store::Sqlite(store),
                    baseline,
                    files,
                })
            }
            Target::Postgres { store } => {
                let schema = format!("es_bench_{}_{name}", std::process::id());
                drop_schema(store, &schema).await?;
                let options = PgOptions::new()
                    .schema(&schema)
                    .map_err(|error| format!("schema `{schema}`: {error}"))?;
                let store = PgStore::with_options(store.pool().clone(), options);
                store.migrate().await?;
                let baseline = Baseline::postgres(store.pool().clone(), &schema);
                Ok(Db {
                    store: Store::Postgres(store),
                    baseline,
                    files: Vec::new(),
                })
            }
        }
    }

    /// Removes a workload's database.
    pub(crate) async fn remove(&self, db: Db) -> Result<(), BenchError> {
        match db.store {
            Store::Sqlite(store) => {
                store.close().await;
                for file in &db.files {
                    let _ = std::fs::remove_file(file);
                }
            }
            Store::Postgres(store) => {
                let schema = store.schema().to_owned();
                drop_schema(&store, &schema).await?;
            }
        }
        Ok(())
    }
}

async fn drop_schema(store: &PgStore, schema: &str) -> Result<(), BenchError> {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(store.pool())
        .await?;
    Ok(())
}
