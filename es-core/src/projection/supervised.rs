//! A projection runner in a task of its own, kept running: what a service starts in one line,
//! waits on for read-your-writes, asks for health, and shuts down cleanly.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{Projection, ProjectionError, ProjectionRunner, ProjectionStore};
use crate::backoff::Backoff;
use crate::envelope::Position;
use crate::store::StoreError;

type CheckpointLoader = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Option<Position>, StoreError>> + Send>>
        + Send
        + Sync,
>;

/// What a supervised projection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunState {
    /// Taking the lock and catching up.
    Starting,
    /// Holding the lock: caught up or catching up, tailing the log.
    Running,
    /// Another runner (another replica of the service) holds the projection; this one takes
    /// over when that one stops.
    Standby,
    /// The last run failed; the next starts after a backoff.
    Retrying {
        /// Failed runs in a row.
        failures: u32,
    },
    /// Shut down (or the task ended).
    Stopped,
}

/// A supervised projection's health: what a `/health` endpoint or an alert looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The projection's key (its name, with the tenant of a tenant-scoped runner).
    pub projection: String,
    /// What it is doing.
    pub state: RunState,
    /// The checkpoint this runner last committed (`None` before its first).
    pub checkpoint: Option<Position>,
    /// How many times the runner was started again after an error.
    pub restarts: u32,
    /// The last error, as text.
    pub last_error: Option<String>,
    /// When the state last changed.
    pub since: DateTime<Utc>,
}

/// Why waiting for a projection ended without it reaching the position.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout passed first.
    #[error(
        "projection `{projection}` did not reach position {position} within {timeout:?} (it is at {})",
        .checkpoint.map_or_else(|| "the start".to_owned(), |p| p.to_string())
    )]
    Timeout {
        /// The projection.
        projection: String,
        /// The position waited for.
        position: Position,
        /// How long it waited.
        timeout: Duration,
        /// Where the projection was.
        checkpoint: Option<Position>,
    },
    /// Its checkpoint could not be read.
    #[error("projection `{projection}`: {source}")]
    Store {
        /// The projection.
        projection: String,
        /// The store's error.
        source: StoreError,
    },
}

/// How a supervised runner restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// Waits between failed runs: from 100 ms, doubling, up to 30 s, with jitter, unless set.
    pub backoff: Backoff,
    /// How often a standby runner tries to take the projection over.
    pub standby_poll: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            standby_poll: Duration::from_secs(1),
        }
    }
}

/// A projection runner kept running in a task of its own: see [`ProjectionRunner::spawn`].
///
/// Cheap to clone; every clone watches the same runner.
#[derive(Clone)]
pub struct RunningProjection {
    key: String,
    health: watch::Receiver<Health>,
    checkpoints: watch::Receiver<Option<Position>>,
    stop: watch::Sender<bool>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    load_checkpoint: CheckpointLoader,
}

impl std::fmt::Debug for RunningProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningProjection")
            .field("health", &*self.health.borrow())
            .finish()
    }
}

impl<S, P> ProjectionRunner<S, P>
where
    S: ProjectionStore,
    P: Projection<S> + 'static,
{
    /// Runs the projection in a task of its own until [`RunningProjection::shutdown`]:
    /// catching up, tailing the log, and starting again after any error with a jittered
    /// backoff ([`Supervision::default`]). While another runner holds the projection (another
    /// replica), it waits on standby and takes over when that one stops.
    ///
    /// ```no_run
    /// # async fn service<S: es_core::projection::ProjectionStore, P: es_core::projection::Projection<S> + 'static>(store: S, read_model: P) {
    /// use es_core::projection::ProjectionRunner;
    /// let order_list = ProjectionRunner::new(store, read_model).spawn();
    /// // ... in a handler, after a command: see its effect in the read model.
    /// # let position = es_core::Position::START;
    /// order_list.wait_for(position, std::time::Duration::from_secs(2)).await.ok();
    /// // ... on shutdown: stops between batches and releases the lock.
    /// order_list.shutdown().await;
    /// # }
    /// ```
    pub fn spawn(self) -> RunningProjection {
        self.spawn_with(Supervision::default())
    }

    /// [`spawn`](Self::spawn) with other restart settings.
    pub fn spawn_with(mut self, supervision: Supervision) -> RunningProjection {
        let key = self.key();
        let (checkpoint_sender, checkpoints) = watch::channel(None);
        self.checkpoints = Some(checkpoint_sender);
        let (health_sender, health) = watch::channel(Health {
            projection: key.clone(),
            state: RunState::Starting,
            checkpoint: None,
            restarts: 0,
            last_error: None,
            since: Utc::now(),
        });
        let (stop, stopped) = watch::channel(false);
        let load_checkpoint: CheckpointLoader = {
            let store = self.store.clone();
            let key = key.clone();
            Arc::new(move || {
                let store = store.clone();
                let key = key.clone();
                Box::pin(async move { store.load_checkpoint(&key).await })
            })
        };
        let task = tokio::spawn(supervise(self, supervision, health_sender, stopped));
        RunningProjection {
            key,
            health,
            checkpoints,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
            load_checkpoint,
        }
    }
}

/// Resolves once `stopped` says stop (or its sender is gone).
async fn stop_asked(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn supervise<S, P>(
    mut runner: ProjectionRunner<S, P>,
    supervision: Supervision,
    health: watch::Sender<Health>,
    stopped: watch::Receiver<bool>,
) where
    S: ProjectionStore,
    P: Projection<S>,
{
    let set_state = |state: RunState, error: Option<String>| {
        health.send_modify(|health| {
            if health.state != state {
                health.since = Utc::now();
            }
            if matches!(state, RunState::Retrying { .. }) {
                health.restarts += 1;
            }
            health.state = state;
            if error.is_some() {
                health.last_error = error;
            }
        });
    };
    let mut checkpoints = runner.checkpoints.as_ref().map(watch::Sender::subscribe);
    let mut failures = 0u32;
    loop {
        if *stopped.borrow() {
            break;
        }
        set_state(RunState::Running, None);
        let run = runner.run(stop_asked(stopped.clone()));
        let result = match checkpoints.as_mut() {
            // Mirror every committed checkpoint into the health report while running.
            Some(checkpoints) => {
                let mirror = async {
                    while checkpoints.changed().await.is_ok() {
                        let checkpoint = *checkpoints.borrow_and_update();
                        health.send_modify(|health| health.checkpoint = checkpoint);
                        if failures > 0 {
                            failures = 0;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    result = run => result,
                    () = mirror => unreachable_pending(),
                }
            }
            None => run.await,
        };
        let pause = match result {
            Ok(checkpoint) => {
                health.send_modify(|health| health.checkpoint = Some(checkpoint));
                break;
            }
            Err(ProjectionError::AlreadyRunning { .. }) => {
                set_state(RunState::Standby, None);
                supervision.standby_poll
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(projection = %runner.key(), failures, %error, "projection runner failed; starting again after a backoff");
                set_state(RunState::Retrying { failures }, Some(error.to_string()));
                supervision.backoff.delay(failures)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop_asked(stopped.clone()) => break,
        }
    }
    set_state(RunState::Stopped, None);
}

/// The mirror future never completes; this is its unreachable arm's value.
fn unreachable_pending<T>() -> T {
    unreachable!("the checkpoint mirror never completes")
}

impl RunningProjection {
    /// The projection's key.
    pub fn projection(&self) -> &str {
        &self.key
    }

    /// The runner's health now.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Waits until the projection's checkpoint has reached `position` (for example an
    /// [`Executed::last_position`](crate::Executed::last_position)), so the read model shows
    /// that event's effect: read-your-writes. Commits of this runner wake the wait at once; a
    /// projection run by another replica is seen by looking at its checkpoint every 25 ms.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checkpoints = self.checkpoints.clone();
        loop {
            let local = *checkpoints.borrow_and_update();
            if local.is_some_and(|checkpoint| checkpoint >= position) {
                return Ok(());
            }
            let stored = (self.load_checkpoint)()
                .await
                .map_err(|source| WaitError::Store {
                    projection: self.key.clone(),
                    source,
                })?;
            if stored.is_some_and(|checkpoint| checkpoint >= position) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitError::Timeout {
                    projection: self.key.clone(),
                    position,
                    timeout,
                    checkpoint: stored.max(local),
                });
            }
            tokio::select! {
                _ = checkpoints.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(25)) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Stops the runner between batches and returns once it has released the projection's
    /// lock, so another runner can take it at once.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(projection = %self.key, "the projection task panicked");
        }
    }
}
