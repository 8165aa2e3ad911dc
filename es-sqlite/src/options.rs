//! [`SqliteOptions`]: the knobs of a store, with defaults that suit one process or a few.

use std::time::Duration;

/// How long a connection waits for the database's write lock before failing.
pub(crate) const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`SqliteStore`](crate::SqliteStore).
///
/// `busy_timeout`, `max_connections` and `migrate` configure what
/// [`SqliteStore::open_with`](crate::SqliteStore::open_with) does; the others apply to stores
/// made from a pool of your own too ([`SqliteStore::new_with`](crate::SqliteStore::new_with)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    pub(crate) busy_timeout: Duration,
    pub(crate) max_connections: u32,
    pub(crate) lock_lease: Duration,
    pub(crate) min_poll_interval: Duration,
    pub(crate) max_poll_interval: Duration,
    pub(crate) migrate: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_connections: 8,
            lock_lease: Duration::from_secs(30),
            min_poll_interval: Duration::from_millis(10),
            max_poll_interval: Duration::from_secs(1),
            migrate: true,
        }
    }
}

impl SqliteOptions {
    /// The defaults: a 30 s busy timeout, 8 connections, a 30 s projection lease, polling
    /// between 10 ms and 1 s, and migrating the schema on open.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a write waits for another connection (or process) to release SQLite's write
    /// lock before it fails. Writes of this store queue in process first, so this only bounds
    /// waits for other processes and for open projection transactions.
    pub fn busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// The most connections the pool opens (at least 2: a projection transaction holds one
    /// while appends and reads need another).
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections.max(2);
        self
    }

    /// How long a projection lock stays valid without a heartbeat (renewed every third of it).
    /// A runner in another process whose heartbeats stopped for this long (it crashed or hung)
    /// loses the projection to the next runner that asks. Every process sharing a file should
    /// use the same lease.
    pub fn lock_lease(mut self, lock_lease: Duration) -> Self {
        self.lock_lease = lock_lease.max(Duration::from_millis(30));
        self
    }

    /// The longest pause between two looks at the log while a live projection waits for
    /// events appended by another process (appends of this process wake it at once). Polling
    /// starts at 10 ms and doubles up to this.
    pub fn max_poll_interval(mut self, max_poll_interval: Duration) -> Self {
        self.max_poll_interval = max_poll_interval.max(self.min_poll_interval);
        self
    }

    /// Whether [`SqliteStore::open_with`](crate::SqliteStore::open_with) brings the schema up
    /// to date (the default), or only checks that it is.
    ///
    /// Turn it off when something else owns the schema: a deploy step that runs
    /// [`SqliteStore::migrate`](crate::SqliteStore::migrate) once before the new release
    /// starts (a failed migration then stops the deploy instead of every process, and no
    /// process takes the write lock at start-up to look), or an operator who upgrades schemas
    /// by hand after a backup. The store then only reads the schema's version: it refuses a
    /// database whose schema is behind this release's
    /// ([`OpenError::NotMigrated`](crate::OpenError::NotMigrated)) or ahead of it
    /// ([`OpenError::NewerSchema`](crate::OpenError::NewerSchema)), and writes nothing.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
}
