//! What projections need from the store: checkpoints and dead letters written through the same
//! transaction as a SQL read model, a per-projection advisory lock, and live notification.

use std::time::Duration;

use es_core::projection::{DeadLetter, ProjectionStore};
use es_core::{Position, RecordedEvent, StoreError};
use sqlx::postgres::{PgConnection, PgListener, Postgres};
use sqlx::{Connection, Row};
use tokio::sync::watch;

use crate::read::{decode_event, position, position_params};
use crate::sql::ADVISORY_KEY;
use crate::store::{Leases, PgStore};

/// While committed events wait behind an older running transaction, no notification announces
/// that it ended: look again this often instead of waiting for the full timeout.
const HELD_BACK_POLL: Duration = Duration::from_millis(50);

/// How long [`ProjectionStore::try_lock`] allows a lock released an instant ago to disappear
/// (the server releases it when it notices the closed connection), or a predecessor's last
/// transaction to end, before reporting the projection taken.
const LOCK_GRACE: [Duration; 2] = [Duration::from_millis(10), Duration::from_millis(40)];

/// A projection held by one runner: a session-level advisory lock on a connection of its own
/// (detached from the pool, so it takes no pool slot).
///
/// Dropping it closes the connection, and the server then releases the lock. Call
/// [`PgLock::release`] to release it at once and know that it was.
///
/// While it is held, the checkpoint and dead-letter writes of its projection through the same
/// store are *fenced*: each checks, inside its transaction, that this lock is still held. If
/// the lock's connection was lost (a network cut, an idle-session timeout, an operator's
/// `pg_terminate_backend`) and another runner may have taken the projection over, the write
/// fails with [`LockLost`] and the whole batch, read-model writes included, rolls back.
#[derive(Debug)]
pub struct PgLock {
    connection: Option<PgConnection>,
    key: String,
    projection: String,
    pid: i32,
    leases: Leases,
}

impl PgLock {
    /// Releases the lock and closes its connection.
    pub async fn release(mut self) -> Result<(), StoreError> {
        self.forget();
        let Some(mut connection) = self.connection.take() else {
            return Ok(());
        };
        let unlocked = sqlx::query(&format!("SELECT pg_advisory_unlock({ADVISORY_KEY})"))
            .bind(&self.key)
            .execute(&mut connection)
            .await;
        // Closing releases the lock anyway, even if the unlock failed.
        let closed = connection.close().await;
        unlocked.map_err(|e| StoreError::backend("release a projection lock", e))?;
        closed.map_err(|e| StoreError::backend("close a projection lock's connection", e))
    }

    /// Removes the lease this lock registered with its store.
    fn forget(&self) {
        let mut leases = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if leases.get(&self.projection) == Some(&self.pid) {
            leases.remove(&self.projection);
        }
    }
}

impl Drop for PgLock {
    fn drop(&mut self) {
        self.forget();
        if let Some(connection) = self.connection.take() {
            // Close politely when a runtime is at hand; dropping the connection closes its
            // socket either way, and the server releases the lock with the session.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = connection.close().await;
                });
            }
        }
    }
}

/// A projection write was refused because the runner no longer holds the projection's lock.
///
/// It reaches callers as the source of a [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
#[error("the lock of projection `{projection}` was lost: another runner may have taken it over")]
pub struct LockLost {
    /// The projection.
    pub projection: String,
}

/// The name the projection's lock key is derived from.
fn lock_name(store: &PgStore, projection: &str) -> String {
    format!("es-postgres projection {}.{projection}", store.schema())
}

/// The name of the key a projection's writing transactions share, and a new holder of the lock
/// takes exclusively for an instant to make sure no predecessor's transaction is still
/// committing.
fn batch_name(store: &PgStore, projection: &str) -> String {
    format!(
        "es-postgres projection batch {}.{projection}",
        store.schema()
    )
}

/// Checks, inside `transaction`, that the projection's lock taken through this store is still
/// held; a no-op for projections not locked through it.
///
/// First the transaction takes the batch key shared, until it ends: a new holder of the lock
/// cannot start while it runs. Then it checks that the lock is held by the backend that took it.
/// So either the check fails (a new holder already has the lock), or the transaction commits
/// before a new holder reads the checkpoint.
async fn fence(
    store: &PgStore,
    transaction: &mut sqlx::Transaction<'static, Postgres>,
    projection: &str,
) -> Result<(), StoreError> {
    let holder = {
        let leases = store
            .inner
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        leases.get(projection).copied()
    };
    let Some(pid) = holder else { return Ok(()) };
    let operation = || projection_op("check the lock", projection);
    sqlx::query(&format!(
        "SELECT pg_advisory_xact_lock_shared({ADVISORY_KEY})"
    ))
    .bind(batch_name(store, projection))
    .execute(&mut **transaction)
    .await
    .map_err(backend(operation()))?;
    let held: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND pid = $2 \
           AND objsubid = 1 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((classid::bigint << 32) | objid::bigint) = {ADVISORY_KEY})"
    ))
    .bind(lock_name(store, projection))
    .bind(pid)
    .fetch_one(&mut **transaction)
    .await
    .map_err(backend(operation()))?;
    if held {
        Ok(())
    } else {
        Err(StoreError::backend(
            operation(),
            LockLost {
                projection: projection.to_owned(),
            },
        ))
    }
}

fn backend(operation: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let operation = operation.into();
    move |error| StoreError::backend(operation, error)
}

fn projection_op(what: &str, projection: &str) -> String {
    format!("{what} of projection `{projection}`")
}

impl ProjectionStore for PgStore {
    /// A PostgreSQL transaction: a SQL read model written through it commits together with the
    /// checkpoint (exactly-once effect).
    type Transaction = sqlx::Transaction<'static, Postgres>;
    type Lock = PgLock;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        self.inner
            .pool
            .begin()
            .await
            .map_err(backend("begin a transaction"))
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        transaction
            .commit()
            .await
            .map_err(backend("commit a transaction"))
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        let operation = || projection_op("load the checkpoint", projection);
        let Some(row) = sqlx::query(&self.inner.sql.load_checkpoint)
            .bind(projection)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend(operation()))?
        else {
            return Ok(None);
        };
        let transaction: String = row.try_get(0).map_err(backend(operation()))?;
        let sequence: i64 = row.try_get(1).map_err(backend(operation()))?;
        checkpoint_position(&transaction, sequence, projection).map(Some)
    }

    async fn save_checkpoint(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        fence(self, transaction, projection).await?;
        let (xid, sequence) = position_params(position);
        sqlx::query(&self.inner.sql.save_checkpoint)
            .bind(projection)
            .bind(xid)
            .bind(sequence)
            .execute(&mut **transaction)
            .await
            .map_err(backend(projection_op("save the checkpoint", projection)))?;
        Ok(())
    }

    async fn park(
        &self,
        transaction: &mut Self::Transaction,
        dead_letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        fence(self, transaction, &dead_letter.projection).await?;
        let (xid, sequence) = position_params(dead_letter.position);
        sqlx::query(&self.inner.sql.park)
            .bind(&dead_letter.projection)
            .bind(xid)
            .bind(sequence)
            .bind(dead_letter.event_id)
            .bind(&dead_letter.stream_id)
            .bind(i64::try_from(dead_letter.stream_version).unwrap_or(i64::MAX))
            .bind(&dead_letter.event_type)
            .bind(&dead_letter.error)
            .bind(i64::from(dead_letter.attempts))
            .bind(dead_letter.parked_at)
            .execute(&mut **transaction)
            .await
            .map_err(backend(projection_op(
                "park an event",
                &dead_letter.projection,
            )))?;
        Ok(())
    }

    async fn unpark(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        fence(self, transaction, projection).await?;
        let (xid, sequence) = position_params(position);
        sqlx::query(&self.inner.sql.unpark)
            .bind(projection)
            .bind(xid)
            .bind(sequence)
            .execute(&mut **transaction)
            .await
            .map_err(backend(projection_op("unpark an event", projection)))?;
        Ok(())
    }

    async fn reset_projection(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        fence(self, transaction, projection).await?;
        sqlx::query(&self.inner.sql.reset_projection)
            .bind(projection)
            .execute(&mut **transaction)
            .await
            .map_err(backend(projection_op("reset the checkpoint", projection)))?;
        Ok(())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let operation = || projection_op("list the parked events", projection);
        let rows = sqlx::query(&self.inner.sql.dead_letters)
            .bind(projection)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend(operation()))?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in rows {
            let transaction: String = row.try_get(0).map_err(backend(operation()))?;
            let sequence: i64 = row.try_get(1).map_err(backend(operation()))?;
            let stream_id: String = row.try_get(3).map_err(backend(operation()))?;
            let stored_version: i64 = row.try_get(4).map_err(backend(operation()))?;
            let attempts: i64 = row.try_get(7).map_err(backend(operation()))?;
            letters.push(DeadLetter {
                projection: projection.to_owned(),
                position: position(&transaction, sequence, &stream_id, stored_version)?,
                event_id: row.try_get(2).map_err(backend(operation()))?,
                stream_version: u64::try_from(stored_version).map_err(|_| {
                    StoreError::CorruptRow {
                        stream_id: stream_id.clone(),
                        stream_version: stored_version,
                        reason: format!(
                            "a parked event of projection `{projection}` has a negative version"
                        ),
                    }
                })?,
                stream_id,
                event_type: row.try_get(5).map_err(backend(operation()))?,
                error: row.try_get(6).map_err(backend(operation()))?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                parked_at: row.try_get(8).map_err(backend(operation()))?,
            });
        }
        Ok(letters)
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        let (xid, sequence) = position_params(position);
        let row = sqlx::query(&self.inner.sql.read_event)
            .bind(xid)
            .bind(sequence)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend(format!("read the event at position {position}")))?;
        match row {
            Some(row) => {
                let stream_id: String = row
                    .try_get(1)
                    .map_err(backend(format!("read the event at position {position}")))?;
                decode_event(&row, &stream_id).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn count_after(&self, after: Position) -> Result<u64, StoreError> {
        let (xid, sequence) = position_params(after);
        let count: i64 = sqlx::query_scalar(&self.inner.sql.count_after)
            .bind(xid)
            .bind(sequence)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend("count the events of the global log"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn try_lock(&self, projection: &str) -> Result<Option<PgLock>, StoreError> {
        let operation = || projection_op("take the lock", projection);
        let key = lock_name(self, projection);
        let batch = batch_name(self, projection);
        let mut grace = LOCK_GRACE.iter();
        loop {
            let held_here = {
                let leases = self
                    .inner
                    .leases
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                leases.contains_key(projection)
            };
            if held_here {
                // A lock of this store not yet dropped: its holder is running.
                return Ok(None);
            }
            if let Some(lock) = self
                .lock_once(projection, &key, &batch)
                .await
                .map_err(backend(operation()))?
            {
                return Ok(Some(lock));
            }
            match grace.next() {
                Some(pause) => tokio::time::sleep(*pause).await,
                None => return Ok(None),
            }
        }
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<(), StoreError> {
        // Subscribe before looking, so an append committed between the look and the wait
        // still wakes us.
        let mut feed = self.feed().await?;
        let (xid, sequence) = position_params(after);
        let row = sqlx::query(&self.inner.sql.events_after)
            .bind(xid)
            .bind(sequence)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend("look for new events"))?;
        let deliverable: bool = row.try_get(0).map_err(backend("look for new events"))?;
        let committed: bool = row.try_get(1).map_err(backend("look for new events"))?;
        if deliverable {
            return Ok(());
        }
        let wait = if committed {
            timeout.min(HELD_BACK_POLL)
        } else {
            timeout
        };
        // A closed feed (listener gone) returns at once; the next call starts a new listener.
        let _ = tokio::time::timeout(wait, feed.changed()).await;
        Ok(())
    }
}

fn checkpoint_position(
    transaction: &str,
    sequence: i64,
    projection: &str,
) -> Result<Position, StoreError> {
    let transaction = transaction.parse::<u64>().ok();
    let sequence = u64::try_from(sequence).ok();
    match (transaction, sequence) {
        (Some(transaction), Some(sequence)) => Ok(Position {
            transaction,
            sequence,
        }),
        _ => Err(StoreError::backend(
            format!("load the checkpoint of projection `{projection}`"),
            "the stored checkpoint is not a valid position",
        )),
    }
}

impl PgStore {
    /// One attempt at the projection's lock: the lock itself, then an instant of the batch key
    /// to make sure no predecessor's transaction is still committing.
    async fn lock_once(
        &self,
        projection: &str,
        key: &str,
        batch: &str,
    ) -> Result<Option<PgLock>, sqlx::Error> {
        let mut connection = self.inner.pool.acquire().await?;
        let (acquired, pid): (bool, i32) = sqlx::query_as(&format!(
            "SELECT pg_try_advisory_lock({ADVISORY_KEY}), pg_backend_pid()"
        ))
        .bind(key)
        .fetch_one(&mut *connection)
        .await?;
        if !acquired {
            return Ok(None);
        }
        let quiet: bool = sqlx::query_scalar(&format!(
            "SELECT CASE WHEN pg_try_advisory_lock({ADVISORY_KEY}) \
             THEN pg_advisory_unlock({ADVISORY_KEY}) ELSE false END"
        ))
        .bind(batch)
        .fetch_one(&mut *connection)
        .await?;
        let connection = connection.detach();
        let registered = quiet && {
            let mut leases = self
                .inner
                .leases
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match leases.entry(projection.to_owned()) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(pid);
                    true
                }
            }
        };
        if !registered {
            // A predecessor is still committing, or another task of this process won: closing
            // the connection gives the lock back.
            let _ = connection.close().await;
            return Ok(None);
        }
        Ok(Some(PgLock {
            connection: Some(connection),
            key: key.to_owned(),
            projection: projection.to_owned(),
            pid,
            leases: self.inner.leases.clone(),
        }))
    }

    /// A receiver that changes whenever an append commits (or the listener reconnected and may
    /// have missed one), marked as seen. Starts the store's listener on first use, and again if
    /// it stopped.
    async fn feed(&self) -> Result<watch::Receiver<u64>, StoreError> {
        let mut slot = self.inner.feed.lock().await;
        if let Some(receiver) = slot.as_ref()
            && receiver.has_changed().is_ok()
        {
            let mut receiver = receiver.clone();
            receiver.mark_unchanged();
            return Ok(receiver);
        }
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(backend("connect the notification listener"))?;
        listener
            .listen(&self.inner.channel)
            .await
            .map_err(backend(format!(
                "listen on channel `{}`",
                self.inner.channel
            )))?;
        let (sender, receiver) = watch::channel(0u64);
        tokio::spawn(forward_notifications(
            listener,
            sender,
            self.inner.channel.clone(),
        ));
        *slot = Some(receiver.clone());
        Ok(receiver)
    }
}

/// Bumps the counter on every notification until every receiver is gone (the store was dropped)
/// or the pool closed.
async fn forward_notifications(
    mut listener: PgListener,
    sender: watch::Sender<u64>,
    channel: String,
) {
    let mut failures: u32 = 0;
    loop {
        let received = tokio::select! {
            () = sender.closed() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(_)) => failures = 0,
            // The connection dropped and was re-established: notifications may have been lost,
            // so wake everyone to look.
            Ok(None) => tracing::debug!(channel = %channel, "notification listener reconnected"),
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(channel = %channel, %error, "notification listener failed; waiters fall back to polling");
                let pause = Duration::from_millis(100).saturating_mul(1 << failures.min(6));
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        sender.send_modify(|count| *count = count.wrapping_add(1));
    }
}
