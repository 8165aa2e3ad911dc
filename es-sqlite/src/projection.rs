//! [`ProjectionStore`] on SQLite: checkpoints, dead letters and read models commit in one SQLite
//! transaction; one runner per projection through a leased lock row; live waits woken by this
//! store's appends and by polling for other processes'.

use std::time::{Duration, Instant};

use es_core::projection::{DeadLetter, ProjectionStore};
use es_core::{Position, RecordedEvent, StoreError};
use sqlx::{Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::rows::{self, EVENT_COLUMNS, InvalidValue, micros, now_micros, position_params};
use crate::store::{SqliteStore, begin_immediate};

/// The projection is held by a runner of another store instance (another process, usually)
/// whose lease is current: this runner lost its lease and must not commit.
#[derive(Debug, thiserror::Error)]
#[error(
    "projection `{projection}` is held by runner `{holder}`; this runner (`{this}`) no longer holds its lease (its heartbeats stopped for longer than the lease)"
)]
pub struct LockLost {
    /// The projection.
    pub projection: String,
    /// The current holder (`<pid>:<uuid>`).
    pub holder: String,
    /// The store instance that tried to commit.
    pub this: String,
}

/// A projection held by a runner of this store; released when dropped.
///
/// While held, a background task renews the lease every third of
/// [`SqliteOptions::lock_lease`](crate::SqliteOptions::lock_lease).
#[derive(Debug)]
pub struct SqliteLock {
    store: SqliteStore,
    projection: String,
    lease_id: String,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl SqliteLock {
    /// The projection held.
    pub fn projection(&self) -> &str {
        &self.projection
    }
}

impl Drop for SqliteLock {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        self.store.held().remove(&self.projection);
        // Free the row so other processes need not wait for the lease to run out. Without a
        // runtime (it is shutting down) the lease simply expires; this store can take it back at
        // once either way, its own rows being recognised by owner.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let projection = std::mem::take(&mut self.projection);
            let lease_id = std::mem::take(&mut self.lease_id);
            runtime.spawn(async move {
                let _writer = store.shared.writer.lock().await;
                let released = sqlx::query("DELETE FROM es_projection_locks WHERE projection = ?1 AND lease_id = ?2")
                    .bind(&projection)
                    .bind(&lease_id)
                    .execute(store.pool())
                    .await;
                if let Err(error) = released {
                    tracing::warn!(projection, %error, "failed to release the projection lock; it expires with its lease");
                }
            });
        }
    }
}

impl SqliteStore {
    fn lease_micros(&self) -> i64 {
        i64::try_from(self.shared.options.lock_lease.as_micros()).unwrap_or(i64::MAX)
    }

    /// Takes the lock row when it is free, expired or this store's own; the new lease's id.
    async fn acquire_lease(&self, projection: &str) -> Result<Option<String>, StoreError> {
        let backend = |error: sqlx::Error| {
            StoreError::backend(format!("lock projection `{projection}`"), error)
        };
        let _writer = self.shared.writer.lock().await;
        let mut transaction = begin_immediate(self.pool()).await.map_err(backend)?;
        let now = now_micros();
        let holder = sqlx::query(
            "SELECT owner, heartbeat_at FROM es_projection_locks WHERE projection = ?1",
        )
        .bind(projection)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(backend)?;
        if let Some(holder) = holder {
            let owner: String = holder.try_get("owner").map_err(backend)?;
            let heartbeat_at: i64 = holder.try_get("heartbeat_at").map_err(backend)?;
            let live = heartbeat_at >= now.saturating_sub(self.lease_micros());
            if live && owner != self.shared.owner {
                return Ok(None);
            }
            if owner != self.shared.owner {
                tracing::warn!(
                    projection,
                    previous = owner,
                    "taking over a projection lock whose lease expired"
                );
            }
        }
        let lease_id = Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO es_projection_locks (projection, owner, lease_id, heartbeat_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (projection) DO UPDATE SET owner = excluded.owner, lease_id = excluded.lease_id, \
               heartbeat_at = excluded.heartbeat_at",
        )
        .bind(projection)
        .bind(&self.shared.owner)
        .bind(&lease_id)
        .bind(now)
        .execute(&mut *transaction)
        .await
        .map_err(backend)?;
        transaction.commit().await.map_err(backend)?;
        Ok(Some(lease_id))
    }

    /// Renews the lease every third of its length until the lock is dropped or the lease is
    /// found taken over.
    fn spawn_heartbeat(&self, projection: String, lease_id: String) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let every = self.shared.options.lock_lease / 3;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let renewed = {
                    let _writer = store.shared.writer.lock().await;
                    sqlx::query("UPDATE es_projection_locks SET heartbeat_at = ?1 WHERE projection = ?2 AND lease_id = ?3")
                        .bind(now_micros())
                        .bind(&projection)
                        .bind(&lease_id)
                        .execute(store.pool())
                        .await
                };
                match renewed {
                    Ok(done) if done.rows_affected() == 1 => {}
                    Ok(_) => {
                        tracing::error!(
                            projection,
                            "lost the projection lock: another runner took it over after heartbeats were missed; \
                             this runner's next commit will fail"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(projection, %error, "failed to renew the projection lock; retrying")
                    }
                }
            }
        })
    }

    /// Fails when a runner of another store instance holds a current lease on the projection:
    /// a runner whose lease was taken over cannot commit (fencing).
    async fn check_lease(
        &self,
        connection: &mut SqliteConnection,
        projection: &str,
    ) -> Result<(), StoreError> {
        let operation = || format!("save the checkpoint of projection `{projection}`");
        let holder = sqlx::query(
            "SELECT owner, heartbeat_at FROM es_projection_locks WHERE projection = ?1",
        )
        .bind(projection)
        .fetch_optional(&mut *connection)
        .await
        .map_err(|error| StoreError::backend(operation(), error))?;
        let Some(holder) = holder else { return Ok(()) };
        let owner: String = holder
            .try_get("owner")
            .map_err(|error| StoreError::backend(operation(), error))?;
        let heartbeat_at: i64 = holder
            .try_get("heartbeat_at")
            .map_err(|error| StoreError::backend(operation(), error))?;
        if owner != self.shared.owner
            && heartbeat_at >= now_micros().saturating_sub(self.lease_micros())
        {
            return Err(StoreError::backend(
                operation(),
                LockLost {
                    projection: projection.to_owned(),
                    holder: owner,
                    this: self.shared.owner.clone(),
                },
            ));
        }
        Ok(())
    }
}

/// Guards an entry of the in-process set of held projections until a lock takes it over, so a
/// cancelled `try_lock` does not leave the projection held forever.
struct Held<'a> {
    store: &'a SqliteStore,
    projection: &'a str,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.held().remove(self.projection);
        }
    }
}

impl ProjectionStore for SqliteStore {
    type Transaction = sqlx::Transaction<'static, Sqlite>;
    type Lock = SqliteLock;

    /// Starts a write transaction (`BEGIN IMMEDIATE`): it holds SQLite's write lock until it
    /// commits or rolls back, so appends wait for it; keep batches short.
    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        begin_immediate(self.pool())
            .await
            .map_err(|error| StoreError::backend("begin a projection transaction", error))
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        transaction
            .commit()
            .await
            .map_err(|error| StoreError::backend("commit a projection transaction", error))
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        let row = sqlx::query(
            "SELECT transaction_id, position FROM es_checkpoints WHERE projection = ?1",
        )
        .bind(projection)
        .fetch_optional(self.pool())
        .await
        .map_err(|error| {
            StoreError::backend(
                format!("load the checkpoint of projection `{projection}`"),
                error,
            )
        })?;
        row.map(|row| {
            rows::position(
                &row,
                format_args!("the checkpoint of projection `{projection}`"),
            )
        })
        .transpose()
    }

    async fn save_checkpoint(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        self.check_lease(transaction, projection).await?;
        let (transaction_id, sequence) = position_params(position);
        sqlx::query(
            "INSERT INTO es_checkpoints (projection, transaction_id, position, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (projection) DO UPDATE SET transaction_id = excluded.transaction_id, \
               position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(projection)
        .bind(transaction_id)
        .bind(sequence)
        .bind(now_micros())
        .execute(&mut **transaction)
        .await
        .map_err(|error| StoreError::backend(format!("save the checkpoint of projection `{projection}`"), error))?;
        Ok(())
    }

    async fn park(
        &self,
        transaction: &mut Self::Transaction,
        dead_letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        let (transaction_id, sequence) = position_params(dead_letter.position);
        sqlx::query(
            "INSERT INTO es_dead_letters (projection, transaction_id, position, event_id, stream_id, stream_version, \
               event_type, error, attempts, parked_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (projection, transaction_id, position) DO UPDATE SET event_id = excluded.event_id, \
               stream_id = excluded.stream_id, stream_version = excluded.stream_version, \
               event_type = excluded.event_type, error = excluded.error, attempts = excluded.attempts, \
               parked_at = excluded.parked_at",
        )
        .bind(&dead_letter.projection)
        .bind(transaction_id)
        .bind(sequence)
        .bind(dead_letter.event_id.to_string())
        .bind(&dead_letter.stream_id)
        .bind(rows::saturating_i64(dead_letter.stream_version))
        .bind(&dead_letter.event_type)
        .bind(&dead_letter.error)
        .bind(i64::from(dead_letter.attempts))
        .bind(micros(dead_letter.parked_at))
        .execute(&mut **transaction)
        .await
        .map_err(|error| {
            StoreError::backend(
                format!(
                    "park event at position {} for projection `{}`",
                    dead_letter.position, dead_letter.projection
                ),
                error,
            )
        })?;
        Ok(())
    }

    async fn unpark(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        let (transaction_id, sequence) = position_params(position);
        sqlx::query("DELETE FROM es_dead_letters WHERE projection = ?1 AND transaction_id = ?2 AND position = ?3")
            .bind(projection)
            .bind(transaction_id)
            .bind(sequence)
            .execute(&mut **transaction)
            .await
            .map_err(|error| {
                StoreError::backend(format!("unpark event at position {position} for projection `{projection}`"), error)
            })?;
        Ok(())
    }

    async fn reset_projection(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        let backend = |error: sqlx::Error| {
            StoreError::backend(format!("reset projection `{projection}`"), error)
        };
        sqlx::query("DELETE FROM es_checkpoints WHERE projection = ?1")
            .bind(projection)
            .execute(&mut **transaction)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM es_dead_letters WHERE projection = ?1")
            .bind(projection)
            .execute(&mut **transaction)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT projection, transaction_id, position, event_id, stream_id, stream_version, event_type, error, \
               attempts, parked_at \
             FROM es_dead_letters WHERE projection = ?1 ORDER BY transaction_id, position",
        )
        .bind(projection)
        .fetch_all(self.pool())
        .await
        .map_err(|error| StoreError::backend(format!("read the dead letters of projection `{projection}`"), error))?;
        rows.iter().map(rows::dead_letter).collect()
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        let (transaction_id, sequence) = position_params(position);
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM es_events WHERE position = ?2 AND transaction_id = ?1"
        ))
        .bind(transaction_id)
        .bind(sequence)
        .fetch_optional(self.pool())
        .await
        .map_err(|error| {
            StoreError::backend(format!("read the event at position {position}"), error)
        })?;
        row.as_ref().map(rows::recorded_event).transpose()
    }

    async fn count_after(&self, after: Position) -> Result<u64, StoreError> {
        let (transaction_id, sequence) = position_params(after);
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM es_events \
             WHERE position > ?3 AND (transaction_id > ?1 OR (transaction_id = ?1 AND position > ?2))",
        )
        .bind(transaction_id)
        .bind(sequence)
        .bind(transaction_id.min(sequence))
        .fetch_one(self.pool())
        .await
        .map_err(|error| StoreError::backend(format!("count the events after position {after}"), error))?;
        u64::try_from(count).map_err(|_| {
            StoreError::backend(
                "count events",
                InvalidValue(format!("count(*) returned {count}")),
            )
        })
    }

    /// Takes the projection for this runner: at once `None` when a runner of this store holds
    /// it, or a runner of another store instance (another process) holds a current lease.
    async fn try_lock(&self, projection: &str) -> Result<Option<SqliteLock>, StoreError> {
        if !self.held().insert(projection.to_owned()) {
            return Ok(None);
        }
        let mut held = Held {
            store: self,
            projection,
            armed: true,
        };
        let Some(lease_id) = self.acquire_lease(projection).await? else {
            return Ok(None);
        };
        held.armed = false;
        let heartbeat = self.spawn_heartbeat(projection.to_owned(), lease_id.clone());
        Ok(Some(SqliteLock {
            store: self.clone(),
            projection: projection.to_owned(),
            lease_id,
            heartbeat: Some(heartbeat),
        }))
    }

    /// Returns at once when the log already holds events after `after`; otherwise waits for an
    /// append of this store (any clone), looking at the log between waits (every 10 ms at first,
    /// backing off to [`SqliteOptions::max_poll_interval`](crate::SqliteOptions::max_poll_interval))
    /// to see appends of other processes, until `timeout`.
    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let options = &self.shared.options;
        let mut pause = options.min_poll_interval;
        loop {
            let notified = self.shared.appended.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before looking, so an append between the look and the wait still wakes us.
            notified.as_mut().enable();
            if self.head().await?.is_some_and(|head| head > after) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if tokio::time::timeout(pause.min(left), notified)
                .await
                .is_ok()
            {
                return Ok(());
            }
            pause = (pause * 2).min(options.max_poll_interval);
        }
    }
}
