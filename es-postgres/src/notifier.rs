//! Live wake-ups, sent right after an append commits by a background task of the store.
//!
//! Why not `pg_notify` inside the append: PostgreSQL serialises the commits of transactions that
//! issued `NOTIFY` (8 psql sessions: 245-337 commits/s with it, 886-1,062 without). Appends only
//! [`Notifier::signal`]; the task sends the notifies one at a time, and signals that arrive while
//! one is in flight collapse into one follow-up, which starts after all of them: the last append
//! is always followed by a notification. A crash in between only delays runners to their next
//! poll.
//!
//! Why at most one notify per [`MIN_INTERVAL`]: each is a round trip and a little server work,
//! which a steady writer paid once per append (W1 of docs/BENCHMARKS.md: ratio 0.77 with one
//! notify per append, about 0.85 with none). Runners need a wake-up, not one per event: the
//! first append after a quiet spell is announced at once, later ones within the interval
//! together at its end.

use std::sync::{Mutex, PoisonError};

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::mpsc::{self, Receiver, Sender, error::TrySendError};

/// The shortest time between two notifications of one store: how much later than its commit a
/// busy writer's append may be announced.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The store's side of the notifier: the sender of a one-slot channel to the task, started by
/// the first signal. Dropping it (with the store) ends the task.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    sender: Mutex<Option<Sender<()>>>,
}

impl Notifier {
    /// Asks for one notification on `channel` after this point; never waits and never fails.
    /// A signal sent while one is pending merges with it.
    pub(crate) fn signal(&self, pool: &PgPool, channel: &str) {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = slot.as_ref() {
            match sender.try_send(()) {
                // Full: a notify is pending already, and it starts after this call.
                Ok(()) | Err(TrySendError::Full(())) => return,
                // The task is gone (its runtime shut down): start another one below.
                Err(TrySendError::Closed(())) => {}
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(channel, "no tokio runtime to send the notification from");
            return;
        };
        let (sender, receiver) = mpsc::channel(1);
        // The slot of a fresh channel is free.
        let _ = sender.try_send(());
        runtime.spawn(notify(receiver, pool.clone(), channel.to_owned()));
        *slot = Some(sender);
    }
}

/// Sends one `pg_notify` per received signal, one at a time and at most one per
/// [`MIN_INTERVAL`], until the store drops the sender (or the pool is closed).
async fn notify(mut signals: Receiver<()>, pool: PgPool, channel: String) {
    while signals.recv().await.is_some() {
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool)
            .await;
        match sent {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => return,
            // Runners poll too: a lost wake-up only delays them.
            Err(error) => {
                tracing::warn!(channel = %channel, %error, "notifying appended events failed")
            }
        }
        // Signals of appends committed meanwhile wait in the slot, as one.
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}
