//! [`ProjectionStore`] on SQLite: checkpoints, dead letters and read models commit in one SQLite
//! transaction; one runner per projection through a leased lock row, checked inside every
//! committing transaction (the fence); live waits woken by this store's appends and by polling
//! for other processes'.

use std::time::{Duration, Instant};

use es_core::projection::{DeadLetter, ProjectionStore};
use es_core::{LogScope, Position, StoreError};
use sqlx::{Row, Sqlite};
use uuid::Uuid;

use crate::error::store_error;
use crate::rows::{self, InvalidValue, micros, now_micros, position_params};
use crate::store::{SqliteStore, begin_immediate, bind_log_filter, log_queries};

/// A projection held by a runner of this store.
///
/// While held, a background task renews the lease every third of
/// [`SqliteOptions::lock_lease`](crate::SqliteOptions::lock_lease), and every fenced commit
/// renews it too. [`ProjectionStore::release`] deletes the lock row before it returns, so a
/// runner of another process can take the projection at once. Dropping the lock instead
/// releases it in the background, as far as a runtime is still there to do it; otherwise the
/// lease runs out.
#[derive(Debug)]
pub struct SqliteLock {
    store: SqliteStore,
    projection: String,
    lease_id: String,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The row was deleted by [`ProjectionStore::release`]: nothing is left for `drop` to do.
    released: bool,
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
        if self.released {
            return;
        }
        // Best effort: free the row so other processes need not wait for the lease to run out.
        // Without a runtime (it is shutting down) the lease simply expires; this store can take
        // the projection back at once either way, its own rows being recognised by owner.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let projection = std::mem::take(&mut self.projection);
            let lease_id = std::mem::take(&mut self.lease_id);
            runtime.spawn(async move {
                if let Err(error) = store.delete_lease(&projection, &lease_id).await {
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
        let failed =
            |error: sqlx::Error| store_error(format!("lock projection `{projection}`"), error);
        let _writer = self.shared.writer.lock().await;
        let mut transaction = begin_immediate(self.pool()).await.map_err(failed)?;
        let now = now_micros();
        let holder = sqlx::query(
            "SELECT owner, heartbeat_at FROM es_projection_locks WHERE projection = ?1",
        )
        .bind(projection)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(failed)?;
        if let Some(holder) = holder {
            let owner: String = holder.try_get("owner").map_err(failed)?;
            let heartbeat_at: i64 = holder.try_get("heartbeat_at").map_err(failed)?;
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
        .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        Ok(Some(lease_id))
    }

    /// Deletes the lock row of this lease, if it still has it.
    async fn delete_lease(&self, projection: &str, lease_id: &str) -> Result<(), StoreError> {
        let _writer = self.shared.writer.lock().await;
        sqlx::query("DELETE FROM es_projection_locks WHERE projection = ?1 AND lease_id = ?2")
            .bind(projection)
            .bind(lease_id)
            .execute(self.pool())
            .await
            .map_err(|error| {
                store_error(
                    format!("release the lock of projection `{projection}`"),
                    error,
                )
            })?;
        Ok(())
    }

    /// Renews the lease every third of its length until the lock is released or the lease is
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
    /// commits or rolls back, so appends wait for it; keep batches short. SQLite does not
    /// isolate tenants: the scope changes nothing.
    ///
    /// The transaction begins in its turn in this store's queue of writers, like appends and
    /// lease renewals: a runner catching up, whose batches follow each other closely, lets
    /// the writes of this process that queued meanwhile go between two batches, instead of
    /// leaving them to poll for the lock until one lands in the short gap.
    async fn begin(&self, _scope: LogScope<'_>) -> Result<Self::Transaction, StoreError> {
        let _turn = self.shared.writer.lock().await;
        begin_immediate(self.pool())
            .await
            .map_err(|error| store_error("begin a projection transaction", error))
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        transaction
            .commit()
            .await
            .map_err(|error| store_error("commit a projection transaction", error))
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        let row = sqlx::query(
            "SELECT transaction_id, position FROM es_checkpoints WHERE projection = ?1",
        )
        .bind(projection)
        .fetch_optional(self.pool())
        .await
        .map_err(|error| {
            store_error(
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
        .map_err(|error| store_error(format!("save the checkpoint of projection `{projection}`"), error))?;
        Ok(())
    }

    async fn park(
        &self,
        transaction: &mut Self::Transaction,
        dead_letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        let (transaction_id, sequence) = position_params(dead_letter.position);
        sqlx::query(
            "INSERT INTO es_dead_letters (projection, transaction_id, position, event_id, tenant, stream_type, \
               stream_id, stream_version, event_type, error, attempts, parked_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (projection, transaction_id, position) DO UPDATE SET event_id = excluded.event_id, \
               tenant = excluded.tenant, stream_type = excluded.stream_type, stream_id = excluded.stream_id, \
               stream_version = excluded.stream_version, event_type = excluded.event_type, \
               error = excluded.error, attempts = excluded.attempts, parked_at = excluded.parked_at",
        )
        .bind(&dead_letter.projection)
        .bind(transaction_id)
        .bind(sequence)
        .bind(dead_letter.event_id.to_string())
        .bind(&dead_letter.tenant)
        .bind(&dead_letter.stream_type)
        .bind(&dead_letter.stream_id)
        .bind(rows::saturating_i64(dead_letter.stream_version))
        .bind(&dead_letter.event_type)
        .bind(&dead_letter.error)
        .bind(i64::from(dead_letter.attempts))
        .bind(micros(dead_letter.parked_at))
        .execute(&mut **transaction)
        .await
        .map_err(|error| {
            store_error(
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
                store_error(format!("unpark event at position {position} for projection `{projection}`"), error)
            })?;
        Ok(())
    }

    async fn reset_projection(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        let failed =
            |error: sqlx::Error| store_error(format!("reset projection `{projection}`"), error);
        sqlx::query("DELETE FROM es_checkpoints WHERE projection = ?1")
            .bind(projection)
            .execute(&mut **transaction)
            .await
            .map_err(failed)?;
        sqlx::query("DELETE FROM es_dead_letters WHERE projection = ?1")
            .bind(projection)
            .execute(&mut **transaction)
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT projection, transaction_id, position, event_id, tenant, stream_type, stream_id, \
               stream_version, event_type, error, attempts, parked_at \
             FROM es_dead_letters WHERE projection = ?1 ORDER BY transaction_id, position",
        )
        .bind(projection)
        .fetch_all(self.pool())
        .await
        .map_err(|error| store_error(format!("read the dead letters of projection `{projection}`"), error))?;
        rows.iter().map(rows::dead_letter).collect()
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
            released: false,
        }))
    }

    /// Checks, inside the transaction, that the lock row still names this lock's store and
    /// lease and that the lease is current, and renews it: [`StoreError::LockLost`] otherwise.
    /// The transaction holds SQLite's write lock from `begin`, so no other runner can take the
    /// projection over between this check and the commit.
    async fn fence(
        &self,
        transaction: &mut Self::Transaction,
        lock: &SqliteLock,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        let renewed = sqlx::query(
            "UPDATE es_projection_locks SET heartbeat_at = ?4 \
             WHERE projection = ?1 AND owner = ?2 AND lease_id = ?3 AND heartbeat_at >= ?5",
        )
        .bind(&lock.projection)
        .bind(&lock.store.shared.owner)
        .bind(&lock.lease_id)
        .bind(now)
        .bind(now.saturating_sub(lock.store.lease_micros()))
        .execute(&mut **transaction)
        .await
        .map_err(|error| {
            store_error(
                format!("check the lock of projection `{}`", lock.projection),
                error,
            )
        })?;
        if renewed.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::LockLost {
                projection: lock.projection.clone(),
            })
        }
    }

    /// Stops the lease's heartbeat and deletes the lock row before it returns, so that a runner
    /// of another process can take the projection at once.
    async fn release(&self, mut lock: SqliteLock) -> Result<(), StoreError> {
        if let Some(heartbeat) = lock.heartbeat.take() {
            heartbeat.abort();
            // A renewal in flight finishes or is dropped before the row goes.
            let _ = heartbeat.await;
        }
        lock.store
            .delete_lease(&lock.projection, &lock.lease_id)
            .await?;
        lock.released = true;
        Ok(())
    }

    async fn count_after(&self, scope: LogScope<'_>, after: Position) -> Result<u64, StoreError> {
        let count: i64 = bind_log_filter(&log_queries(scope).count, scope, after)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|error| {
                store_error(
                    format!("count the events of {scope} after position {after}"),
                    error,
                )
            })?;
        u64::try_from(count).map_err(|_| {
            StoreError::backend(
                "count events",
                InvalidValue(format!("count(*) returned {count}")),
            )
        })
    }

    /// Returns at once when the log of `scope` already holds events after `after`; otherwise
    /// waits for an append of this store (any clone), looking at the log between waits (every
    /// 10 ms at first, backing off to
    /// [`SqliteOptions::max_poll_interval`](crate::SqliteOptions::max_poll_interval)) to see
    /// appends of other processes, until `timeout`.
    async fn wait_for_events(
        &self,
        scope: LogScope<'_>,
        after: Position,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let options = &self.shared.options;
        let mut pause = options.min_poll_interval;
        loop {
            let notified = self.shared.appended.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before looking, so an append between the look and the wait still wakes us.
            notified.as_mut().enable();
            let any: bool = bind_log_filter(&log_queries(scope).exists, scope, after)
                .fetch_one(self.pool())
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|error| store_error(format!("look at the log of {scope}"), error))?;
            if any {
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

impl es_core::integration::InboxStore for SqliteStore {
    /// Inserts `(consumer, event_id)` into `es_inbox` within the transaction
    /// (`ON CONFLICT DO NOTHING`): `true` when a row was inserted. Projection transactions hold
    /// SQLite's write lock, so no other transaction records the same event meanwhile.
    async fn record_processed(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO es_inbox (consumer, event_id, processed_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(event_id.hyphenated().to_string())
        .bind(now_micros())
        .execute(&mut **transaction)
        .await
        .map_err(|error| {
            store_error(
                format!("record event {event_id} as processed by consumer `{consumer}`"),
                error,
            )
        })?;
        Ok(inserted.rows_affected() == 1)
    }
}
