//! Opening a database file and bringing its schema up to date, with one clear error for each
//! way that can go wrong.

use std::io;
use std::path::{Path, PathBuf};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use crate::options::{DEFAULT_BUSY_TIMEOUT, SqliteOptions};
use crate::store::SqliteStore;

/// The schema, embedded at compile time from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// SQLite's primary result codes this module tells apart (the low byte of an extended code).
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_READONLY: i32 = 8;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// Why a database could not be opened or migrated. In every case nothing was written to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file exists but is not an SQLite database (or is damaged beyond reading).
    #[error("failed to open `{}`: the file is not an SQLite database ({reason}); it was left untouched", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What SQLite reported.
        reason: String,
    },
    /// The file cannot be opened or created there: a missing directory, a path through a
    /// regular file, a directory in the way, or a location the process may not write to.
    #[error("failed to open `{}`: cannot open or create the database file ({reason})", path.display())]
    CannotOpen {
        /// The file.
        path: PathBuf,
        /// What is in the way.
        reason: String,
    },
    /// The database can be read but not written (a read-only file, directory, mount or
    /// connection). es-sqlite writes to the file and keeps `-wal` and `-shm` files beside it.
    #[error(
        "failed to open `{}`: the database is read-only here ({reason}); es-sqlite needs to write the file and to create `-wal` and `-shm` files beside it",
        path.display()
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// What SQLite reported.
        reason: String,
    },
    /// The database was written by a newer es-sqlite whose schema this release does not know.
    #[error(
        "failed to open `{}`: it was created by a newer es-sqlite (schema version {found}, this release knows up to {supported}); upgrade es-sqlite to use it, nothing was changed",
        path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The newest schema version applied to the database.
        found: i64,
        /// The newest schema version this release has.
        supported: i64,
    },
    /// The store was opened without migrating ([`SqliteOptions::migrate`]) and the database's
    /// schema is behind this release's: run [`SqliteStore::migrate`] first (a deploy step, say).
    #[error(
        "failed to open `{}`: its schema is at version {}, this release needs version {required}; migrate it first (`SqliteStore::migrate`), or open it with migrations on",
        path.display(),
        found.map_or_else(|| "0 (no es-sqlite schema)".to_owned(), |found| found.to_string())
    )]
    NotMigrated {
        /// The file.
        path: PathBuf,
        /// The newest schema version applied to the database, `None` when it has none.
        found: Option<i64>,
        /// The schema version this release needs.
        required: i64,
    },
    /// Applying a migration failed; the failed migration was rolled back.
    #[error("failed to migrate `{}`: {source}", path.display())]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The migrator's error.
        source: MigrateError,
    },
    /// Another database error.
    #[error("failed to open `{}`: {source}", path.display())]
    Backend {
        /// The file.
        path: PathBuf,
        /// The driver's error.
        source: sqlx::Error,
    },
}

impl OpenError {
    /// The database file concerned.
    pub fn path(&self) -> &Path {
        match self {
            OpenError::NotADatabase { path, .. }
            | OpenError::CannotOpen { path, .. }
            | OpenError::ReadOnly { path, .. }
            | OpenError::NewerSchema { path, .. }
            | OpenError::NotMigrated { path, .. }
            | OpenError::Migrate { path, .. }
            | OpenError::Backend { path, .. } => path,
        }
    }
}

impl SqliteStore {
    /// Opens the database file at `path`, creating it if missing, and brings its schema up to
    /// date ([`migrate`](Self::migrate)): WAL journal, `synchronous = NORMAL`, foreign keys on,
    /// a 30 s busy timeout.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// [`open`](Self::open) with options. With [`SqliteOptions::migrate`] off, the schema is
    /// only checked: a database whose schema is not this release's is refused, untouched.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let connect = Self::connect_options(path).busy_timeout(options.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .connect_with(connect)
            .await
            .map_err(|error| classify(path, error))?;
        let migrate = options.migrate;
        let store = Self::new_with(pool, options);
        let ready = if migrate {
            store.migrate().await
        } else {
            store.check_schema().await
        };
        if let Err(error) = ready {
            store.close().await;
            return Err(error);
        }
        Ok(store)
    }

    /// The connection options [`open`](Self::open) uses, for building a pool of your own
    /// (then [`new`](Self::new), which does not migrate, and [`migrate`](Self::migrate)):
    /// creates the file if missing, WAL journal, `synchronous = NORMAL`, foreign keys on, a
    /// 30 s busy timeout.
    pub fn connect_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(DEFAULT_BUSY_TIMEOUT)
    }

    /// Brings the schema up to date (the migrations in this crate's `migrations/`); does nothing
    /// when it is. Refuses a database whose schema is newer than this release's, before
    /// changing anything.
    ///
    /// It runs under SQLite's write lock, so processes opening one new file at once migrate it
    /// once. It runs on a connection of its own (with the pool's settings), closed afterwards:
    /// a pooled connection that had run the migrations went on allocating more for every later
    /// statement (about 7% more work in a run of loads and appends).
    pub async fn migrate(&self) -> Result<(), OpenError> {
        let path = self.path();
        let mut connection = self
            .pool()
            .connect_options()
            .connect()
            .await
            .map_err(|error| classify(path, error))?;
        let migrated = migrate_on(&mut connection, path).await;
        let closed = connection.close().await;
        migrated?;
        closed.map_err(|error| classify(path, error))
    }

    /// Refuses a database whose schema is not the one this release migrates to, without
    /// writing anything.
    async fn check_schema(&self) -> Result<(), OpenError> {
        let path = self.path();
        let mut connection = self
            .pool()
            .acquire()
            .await
            .map_err(|error| classify(path, error))?;
        let found = newest_applied_version(&mut connection)
            .await
            .map_err(|error| classify(path, error))?;
        let required = supported_version();
        match found {
            Some(found) if found > required => Err(OpenError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: required,
            }),
            Some(found) if found == required => Ok(()),
            found => Err(OpenError::NotMigrated {
                path: path.to_owned(),
                found,
                required,
            }),
        }
    }

    /// Copies the write-ahead log into the database file (as far as readers in other processes
    /// allow), then closes every connection. Operations after this fail.
    pub async fn close(&self) {
        // Best effort: SQLite checkpoints on the last close too, but a pool closes connections in
        // the background, so without this the file could still be catching up after `close`.
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(self.pool())
            .await;
        self.pool().close().await;
    }
}

/// Migrates the database `connection` is open on, in one `BEGIN IMMEDIATE` transaction.
async fn migrate_on(connection: &mut SqliteConnection, path: &Path) -> Result<(), OpenError> {
    let mut transaction = connection
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|error| classify(path, error))?;
    let supported = supported_version();
    let found = newest_applied_version(&mut transaction)
        .await
        .map_err(|error| classify(path, error))?;
    if let Some(found) = found.filter(|&found| found > supported) {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found,
            supported,
        });
    }
    MIGRATOR
        .run_direct(&mut *transaction)
        .await
        .map_err(|error| migrate_error(path, error))?;
    transaction
        .commit()
        .await
        .map_err(|error| classify(path, error))
}

/// The newest schema version this release has.
fn supported_version() -> i64 {
    MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

/// The newest migration version recorded in the database, `None` for a database es-sqlite never
/// migrated.
async fn newest_applied_version(
    connection: &mut sqlx::SqliteConnection,
) -> Result<Option<i64>, sqlx::Error> {
    let has_table: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *connection)
    .await?;
    if !has_table {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut *connection)
        .await
}

/// The path of the database a pool opens, for messages.
pub(crate) fn pool_path(pool: &SqlitePool) -> PathBuf {
    pool.connect_options().get_filename().to_owned()
}

/// Maps a driver error met while opening to the variant that says what is wrong.
pub(crate) fn classify(path: &Path, error: sqlx::Error) -> OpenError {
    let Some(database) = error.as_database_error() else {
        return OpenError::Backend {
            path: path.to_owned(),
            source: error,
        };
    };
    let reason = database.message().to_owned();
    let code = database
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    match code {
        Some(SQLITE_NOTADB | SQLITE_CORRUPT) => OpenError::NotADatabase {
            path: path.to_owned(),
            reason,
        },
        Some(SQLITE_READONLY) => OpenError::ReadOnly {
            path: path.to_owned(),
            reason,
        },
        Some(SQLITE_CANTOPEN) => OpenError::CannotOpen {
            path: path.to_owned(),
            reason: diagnose(path).unwrap_or_else(|| {
                format!("{reason}; check that the directory exists and that this process may create files in it")
            }),
        },
        _ => OpenError::Backend {
            path: path.to_owned(),
            source: error,
        },
    }
}

fn migrate_error(path: &Path, error: MigrateError) -> OpenError {
    match error {
        MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _) => {
            match classify(path, source) {
                OpenError::Backend { source, .. } => OpenError::Migrate {
                    path: path.to_owned(),
                    source: MigrateError::Execute(source),
                },
                specific => specific,
            }
        }
        other => OpenError::Migrate {
            path: path.to_owned(),
            source: other,
        },
    }
}

/// Why SQLite cannot open or create `path`, found by looking (never writing) at the path and its
/// ancestors; `None` when nothing visible explains it.
fn diagnose(path: &Path) -> Option<String> {
    if path.is_dir() {
        return Some(format!("`{}` is a directory", path.display()));
    }
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for ancestor in parent
        .ancestors()
        .filter(|ancestor| !ancestor.as_os_str().is_empty())
    {
        match std::fs::metadata(ancestor) {
            Ok(metadata) if metadata.is_dir() => {
                if ancestor != parent {
                    return Some(format!("directory `{}` does not exist", parent.display()));
                }
                if metadata.permissions().readonly() {
                    return Some(format!("directory `{}` is read-only", parent.display()));
                }
                return None;
            }
            Ok(_) => {
                return Some(format!(
                    "`{}` is a file, not a directory",
                    ancestor.display()
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Some(format!("cannot inspect `{}`: {error}", ancestor.display())),
        }
    }
    None
}
