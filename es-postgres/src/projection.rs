//! What projections need from the store: checkpoints and dead letters written through the same
//! transaction as a SQL read model, a per-projection advisory lock that fences the transactions
//! of a runner which lost it, and live notification.

use std::time::Duration;

use es_core::projection::{DeadLetter, ProjectionStore};
use es_core::{LogScope, Position, StoreError};
use sqlx::postgres::{PgConnection, PgListener, Postgres};
use sqlx::{Connection, Row};
use tokio::sync::watch;

use crate::error::store_error;
use crate::read::{corrupt, names_no_tenant, position, position_params};
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
/// Dropping it closes the connection, and the server then releases the lock;
/// [`ProjectionStore::release`] (or [`PgLock::release`]) releases it at once and returns when it
/// is free.
///
/// While it is held, [`ProjectionStore::fence`] checks, inside a transaction, that it still is:
/// if the lock's connection was lost (a network cut, an idle-session timeout, an operator's
/// `pg_terminate_backend`) and another runner may have taken the projection over, the fence
/// fails with [`StoreError::LockLost`] and the transaction, read-model writes included, is not
/// committed.
#[derive(Debug)]
pub struct PgLock {
    connection: Option<PgConnection>,
    /// The name the lock's advisory key is derived from.
    key: String,
    /// The name the batch key is derived from.
    batch: String,
    projection: String,
    pid: i32,
    leases: Leases,
}

impl PgLock {
    /// Releases the lock and closes its connection; returns once the lock is free.
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
        unlocked.map_err(|e| store_error("release a projection lock", e))?;
        closed.map_err(|e| store_error("close a projection lock's connection", e))
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

/// The name the projection's lock key is derived from.
pub(crate) fn lock_name(store: &PgStore, projection: &str) -> String {
    format!("es-postgres projection {}.{projection}", store.schema())
}

/// The name of the key a projection's fenced transactions share, and a new holder of the lock
/// takes exclusively for an instant to make sure no predecessor's transaction is still
/// committing.
fn batch_name(store: &PgStore, projection: &str) -> String {
    format!(
        "es-postgres projection batch {}.{projection}",
        store.schema()
    )
}

fn projection_op(what: &str, projection: &str) -> String {
    format!("{what} of projection `{projection}`")
}

fn failed(operation: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let operation = operation.into();
    move |error| store_error(operation, error)
}

impl ProjectionStore for PgStore {
    /// A PostgreSQL transaction: a SQL read model written through it (`&mut **transaction`)
    /// commits together with the checkpoint (exactly-once effect).
    type Transaction = sqlx::Transaction<'static, Postgres>;
    type Lock = PgLock;

    /// Under tenant isolation, a transaction on one tenant's events is scoped to the tenant
    /// before it is handed out, so a read model with the same row level security sees that
    /// tenant's rows only.
    async fn begin(&self, scope: LogScope<'_>) -> Result<Self::Transaction, StoreError> {
        let mut transaction = self
            .inner
            .pool
            .begin()
            .await
            .map_err(failed("begin a transaction"))?;
        if let (true, LogScope::Tenant(tenant)) = (self.isolates_tenants(), scope) {
            sqlx::query(crate::sql::SET_TENANT)
                .bind(tenant)
                .execute(&mut *transaction)
                .await
                .map_err(failed(format!("scope a transaction to {scope}")))?;
        }
        Ok(transaction)
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        transaction
            .commit()
            .await
            .map_err(failed("commit a transaction"))
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        let operation = || projection_op("load the checkpoint", projection);
        let Some(row) = sqlx::query(&self.inner.sql.load_checkpoint)
            .bind(projection)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(failed(operation()))?
        else {
            return Ok(None);
        };
        let transaction: String = row.try_get(0).map_err(failed(operation()))?;
        let sequence: i64 = row.try_get(1).map_err(failed(operation()))?;
        checkpoint_position(&transaction, sequence, projection).map(Some)
    }

    async fn save_checkpoint(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        let (xid, sequence) = position_params(position);
        sqlx::query(&self.inner.sql.save_checkpoint)
            .bind(projection)
            .bind(xid)
            .bind(sequence)
            .execute(&mut **transaction)
            .await
            .map_err(failed(projection_op("save the checkpoint", projection)))?;
        Ok(())
    }

    async fn park(
        &self,
        transaction: &mut Self::Transaction,
        dead_letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        let (xid, sequence) = position_params(dead_letter.position);
        sqlx::query(&self.inner.sql.park)
            .bind(&dead_letter.projection)
            .bind(xid)
            .bind(sequence)
            .bind(dead_letter.event_id)
            .bind(&dead_letter.tenant)
            .bind(&dead_letter.stream_type)
            .bind(&dead_letter.stream_id)
            .bind(i64::try_from(dead_letter.stream_version).unwrap_or(i64::MAX))
            .bind(&dead_letter.event_type)
            .bind(&dead_letter.error)
            .bind(i64::from(dead_letter.attempts))
            .bind(dead_letter.parked_at)
            .execute(&mut **transaction)
            .await
            .map_err(failed(projection_op(
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
        let (xid, sequence) = position_params(position);
        sqlx::query(&self.inner.sql.unpark)
            .bind(projection)
            .bind(xid)
            .bind(sequence)
            .execute(&mut **transaction)
            .await
            .map_err(failed(projection_op("unpark an event", projection)))?;
        Ok(())
    }

    async fn reset_projection(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&self.inner.sql.reset_projection)
            .bind(projection)
            .execute(&mut **transaction)
            .await
            .map_err(failed(projection_op("reset the checkpoint", projection)))?;
        Ok(())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let operation = || projection_op("list the parked events", projection);
        let rows = sqlx::query(&self.inner.sql.dead_letters)
            .bind(projection)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(failed(operation()))?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in rows {
            let column = |e| store_error(operation(), e);
            let transaction: String = row.try_get(0).map_err(column)?;
            let sequence: i64 = row.try_get(1).map_err(column)?;
            let tenant: String = row.try_get(3).map_err(column)?;
            let stream_type: String = row.try_get(4).map_err(column)?;
            let stream_id: String = row.try_get(5).map_err(column)?;
            let stored_version: i64 = row.try_get(6).map_err(column)?;
            let attempts: i64 = row.try_get(9).map_err(column)?;
            let stream = es_core::StreamKey {
                tenant: &tenant,
                stream_type: &stream_type,
                id: &stream_id,
            };
            let position = position(&transaction, sequence, stream, stored_version)?;
            let Ok(stream_version) = u64::try_from(stored_version) else {
                return Err(corrupt(
                    stream,
                    stored_version,
                    format!("a parked event of projection `{projection}` has a negative version"),
                ));
            };
            letters.push(DeadLetter {
                projection: projection.to_owned(),
                position,
                event_id: row.try_get(2).map_err(column)?,
                stream_version,
                event_type: row.try_get(7).map_err(column)?,
                error: row.try_get(8).map_err(column)?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                parked_at: row.try_get(10).map_err(column)?,
                tenant,
                stream_type,
                stream_id,
            });
        }
        Ok(letters)
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
                .map_err(failed(operation()))?
            {
                return Ok(Some(lock));
            }
            match grace.next() {
                Some(pause) => tokio::time::sleep(*pause).await,
                None => return Ok(None),
            }
        }
    }

    /// One statement: the transaction takes the projection's batch key shared, until it ends,
    /// then checks that the lock is held by the backend that took it. A new holder of the lock
    /// takes the batch key exclusively for an instant before it starts. So either the check
    /// fails (a new holder already has the lock), or the transaction commits before a new
    /// holder reads the checkpoint.
    async fn fence(
        &self,
        transaction: &mut Self::Transaction,
        lock: &PgLock,
    ) -> Result<(), StoreError> {
        let held: bool = sqlx::query_scalar(&self.inner.sql.fence)
            .bind(&lock.batch)
            .bind(&lock.key)
            .bind(lock.pid)
            .fetch_one(&mut **transaction)
            .await
            .map_err(failed(projection_op("check the lock", &lock.projection)))?;
        if held {
            Ok(())
        } else {
            Err(StoreError::LockLost {
                projection: lock.projection.clone(),
            })
        }
    }

    async fn release(&self, lock: PgLock) -> Result<(), StoreError> {
        lock.release().await
    }

    async fn count_after(&self, scope: LogScope<'_>, after: Position) -> Result<u64, StoreError> {
        if names_no_tenant(scope) {
            return Ok(0);
        }
        let error = |e| store_error(format!("count the events of the log of {scope}"), e);
        let (xid, sequence) = position_params(after);
        let mut session = self.scope_session(scope).await.map_err(error)?;
        let one_tenant = scope.tenant().is_some();
        let mut query = sqlx::query_scalar(self.inner.sql.count_after(one_tenant))
            // Planned for the tenant it counts (see `Sql::read_all`).
            .persistent(!one_tenant)
            .bind(xid)
            .bind(sequence);
        if let LogScope::Tenant(tenant) = scope {
            query = query.bind(tenant);
        }
        let count: i64 = query.fetch_one(session.connection()).await.map_err(error)?;
        session.finish().await.map_err(error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Woken by the store's notifications (one channel per schema: an append of any tenant
    /// wakes waiters of every scope, who then look).
    async fn wait_for_events(
        &self,
        scope: LogScope<'_>,
        after: Position,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        // Subscribe before looking, so an append committed between the look and the wait
        // still wakes us.
        let mut feed = self.feed().await?;
        let (deliverable, committed) = if names_no_tenant(scope) {
            (false, false)
        } else {
            self.events_after(scope, after).await?
        };
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
    /// Whether events of `scope` after `after` are deliverable now, and whether any are
    /// committed at all (some may be held back by an older running transaction).
    async fn events_after(
        &self,
        scope: LogScope<'_>,
        after: Position,
    ) -> Result<(bool, bool), StoreError> {
        let error = |e| store_error(format!("look for new events of {scope}"), e);
        let (xid, sequence) = position_params(after);
        let mut session = self.scope_session(scope).await.map_err(error)?;
        let one_tenant = scope.tenant().is_some();
        let mut query = sqlx::query(self.inner.sql.events_after(one_tenant))
            // Planned for the tenant it looks at (see `Sql::read_all`).
            .persistent(!one_tenant)
            .bind(xid)
            .bind(sequence);
        if let LogScope::Tenant(tenant) = scope {
            query = query.bind(tenant);
        }
        let row = query.fetch_one(session.connection()).await.map_err(error)?;
        session.finish().await.map_err(error)?;
        Ok((
            row.try_get(0).map_err(error)?,
            row.try_get(1).map_err(error)?,
        ))
    }

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
            batch: batch.to_owned(),
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
            .map_err(failed("connect the notification listener"))?;
        listener
            .listen(&self.inner.channel)
            .await
            .map_err(failed(format!(
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

impl es_core::integration::InboxStore for PgStore {
    /// Inserts `(consumer, event_id)` into the schema's `inbox` table within the transaction
    /// (`ON CONFLICT DO NOTHING`): `true` when a row was inserted. A second transaction
    /// recording the same event waits for the first and finds the row once it commits.
    async fn record_processed(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        event_id: uuid::Uuid,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(&self.inner.sql.record_processed)
            .bind(consumer)
            .bind(event_id)
            .execute(&mut **transaction)
            .await
            .map_err(failed(format!(
                "record event {event_id} as processed by consumer `{consumer}`"
            )))?;
        Ok(inserted.rows_affected() == 1)
    }
}
