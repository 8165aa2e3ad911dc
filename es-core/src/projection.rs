//! Projections: read models built from the global log, with checkpoints, retries, dead letters
//! and rebuilds.
//!
//! A [`Projection`] names itself, declares the event enum it consumes and handles each of those
//! events with its envelope. A [`ProjectionRunner`] feeds it from the projection's checkpoint in
//! batches, then tails the log live, and stores the checkpoint in the store's own database.
//!
//! **Delivery.** Each batch's handler calls and the checkpoint share one store transaction
//! ([`ProjectionStore::Transaction`]). A read model written through that transaction (a table in
//! the same SQL database) is updated exactly once per event: both commit together or neither
//! does. A read model kept anywhere else sees every event at least once: after a crash, the
//! events since the last committed checkpoint are handled again, so its handler must be
//! idempotent.
//!
//! **Failures.** A handler error is retried with exponential backoff; after the last attempt the
//! event is parked in the dead-letter list and the projection goes on ([`OnFailure::Park`]), or
//! the runner stops with the error ([`OnFailure::Stop`]). An event the projection declares but
//! cannot decode is treated the same way, without retries (decoding again would fail again).
//! Nothing is skipped silently.
//!
//! **One runner per projection.** A runner takes the projection's lock in the store before it
//! reads, and every transaction it commits is *fenced*: the store checks, inside the
//! transaction, that the lock is still held ([`ProjectionStore::fence`]). A runner that lost its
//! lock (a network cut, an expired lease) fails with [`StoreError::LockLost`] and commits
//! nothing, so a read model never sees an event twice from two runners.
//!
//! **Tenants.** A runner reads every tenant's events unless scoped to one with
//! [`ProjectionRunner::for_tenant`]; the envelope names each event's tenant.

mod supervised;

pub use supervised::{Health, RunState, RunningProjection, Supervision, WaitError};

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::Either;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::envelope::{Position, RecordedEvent};
use crate::event::{DecodeError, Event};
use crate::store::{EventStore, StoreError};
use crate::stream::{LogScope, StreamKeyBuf, Tenant};

/// A boxed error from a projection's handler.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// An event a projection could not handle, parked so the projection could go on.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The projection.
    pub projection: String,
    /// The event's place in the global log.
    pub position: Position,
    /// The event's id.
    pub event_id: Uuid,
    /// The tenant of the event's stream.
    pub tenant: String,
    /// The type of the event's stream.
    pub stream_type: String,
    /// The event's stream id.
    pub stream_id: String,
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event type.
    pub event_type: String,
    /// The last error, as text.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

impl DeadLetter {
    fn new(projection: &str, event: &RecordedEvent, error: String, attempts: u32) -> Self {
        Self {
            projection: projection.to_owned(),
            position: event.position,
            event_id: event.event_id,
            tenant: event.tenant.clone(),
            stream_type: event.stream_type.clone(),
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
            error,
            attempts,
            parked_at: Utc::now(),
        }
    }
}

/// What a store offers projections: checkpoints, dead letters, a transaction shared with the
/// read model, a lock so one runner per projection works at a time, and live notification.
///
/// A store must implement the transaction, checkpoint, dead-letter and lock methods;
/// [`count_after`](Self::count_after), [`wait_for_events`](Self::wait_for_events) and
/// [`release`](Self::release) have correct defaults (paging, polling, dropping the lock) that a
/// store overrides to be faster or to wake runners at once. Every implementation passes the
/// projection conformance suite (`es_core::conformance`, feature `conformance`).
pub trait ProjectionStore: EventStore {
    /// The unit of work a batch commits: read-model writes of SQL projections go through it.
    type Transaction: Send;
    /// Held while a runner owns a projection; dropping it releases the projection (perhaps only
    /// later: [`release`](Self::release) releases it before returning).
    type Lock: Send;

    /// Starts a transaction for work on the events of `scope` (a store that isolates tenants
    /// scopes the transaction to the tenant).
    fn begin(
        &self,
        scope: LogScope<'_>,
    ) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

    /// Commits a transaction. Dropping one uncommitted rolls it back.
    fn commit(
        &self,
        transaction: Self::Transaction,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The projection's checkpoint (`None`: never ran).
    fn load_checkpoint(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Position>, StoreError>> + Send;

    /// Sets the projection's checkpoint within `transaction`.
    fn save_checkpoint(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Parks an event within `transaction` (replacing an earlier entry for the same position).
    fn park(
        &self,
        transaction: &mut Self::Transaction,
        dead_letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a parked event within `transaction`.
    fn unpark(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
        position: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the projection's checkpoint and parked events within `transaction` (rebuilds).
    fn reset_projection(
        &self,
        transaction: &mut Self::Transaction,
        projection: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The projection's parked events, oldest first.
    fn dead_letters(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StoreError>> + Send;

    /// Takes the projection's lock, or `None` at once if another runner holds it.
    fn try_lock(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send;

    /// Checks, inside `transaction`, that `lock` is still held, so that the transaction commits
    /// only if no other runner can have taken the projection over; [`StoreError::LockLost`]
    /// otherwise. The runner calls it before every commit.
    fn fence(
        &self,
        transaction: &mut Self::Transaction,
        lock: &Self::Lock,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Releases the lock, and returns once another runner can take it. The default drops it.
    fn release(&self, lock: Self::Lock) -> impl Future<Output = Result<(), StoreError>> + Send {
        drop(lock);
        async { Ok(()) }
    }

    /// How many events of `scope` the log holds after `after` (for progress reports). The
    /// default reads them in pages; stores override it with a count.
    fn count_after(
        &self,
        scope: LogScope<'_>,
        after: Position,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            let mut count = 0u64;
            let mut after = after;
            loop {
                let page = self.read_all(scope, after, COUNT_PAGE).await?;
                let Some(last) = page.last() else {
                    return Ok(count);
                };
                after = last.position;
                count += page.len() as u64;
            }
        }
    }

    /// Waits until events of `scope` may have been appended after `after`, or `timeout` passed.
    /// Spurious wake-ups are allowed. The default looks at the log every 10 ms at first,
    /// backing off to every 500 ms; stores that can be notified override it.
    fn wait_for_events(
        &self,
        scope: LogScope<'_>,
        after: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let deadline = Instant::now() + timeout;
            let mut pause = Duration::from_millis(10);
            loop {
                if !self.read_all(scope, after, 1).await?.is_empty() {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// The page size of the default [`ProjectionStore::count_after`].
const COUNT_PAGE: usize = 1000;

/// A read model fed from the global log.
///
/// `S` is the store it runs on; SQL read models write through the transaction they are given,
/// so their writes commit with the checkpoint.
pub trait Projection<S: ProjectionStore>: Send {
    /// The events it consumes. Events of other types are skipped by name, undecoded.
    type Event: Event;

    /// A stable name: the key of its checkpoint and dead letters.
    fn name(&self) -> &str;

    /// Updates the read model for one event.
    fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &Self::Event,
        envelope: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Clears the read model before a rebuild.
    fn reset(
        &mut self,
        transaction: &mut S::Transaction,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Updates the read model for a batch: the decoded events the projection declares, in log
    /// order, within the transaction that commits the batch's checkpoint.
    ///
    /// The default calls [`handle`](Self::handle) on each. A read model overrides it to write
    /// the whole batch with a few set-based statements (one multi-row `INSERT ... ON CONFLICT`
    /// instead of a statement per event); it must leave the read model as `handle` on each
    /// event in order would. When it fails, the runner rolls the batch back and redoes it one
    /// event per transaction through `handle`, so a bad event is retried and parked alone and
    /// the others commit. An error that is an [`EventFailed`] names the failing event, and that
    /// failure counts as the event's first attempt.
    fn handle_batch(
        &mut self,
        transaction: &mut S::Transaction,
        events: &[Decoded<'_, Self::Event>],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        handle_each(self, transaction, events)
    }
}

/// What the default [`Projection::handle_batch`] does: `handle` on each event, in order, an
/// error naming the event it failed on.
pub(crate) async fn handle_each<S: ProjectionStore, P: Projection<S> + ?Sized>(
    projection: &mut P,
    transaction: &mut S::Transaction,
    events: &[Decoded<'_, P::Event>],
) -> Result<(), HandlerError> {
    for decoded in events {
        projection
            .handle(transaction, &decoded.event, decoded.envelope)
            .await
            .map_err(|source| -> HandlerError {
                Box::new(EventFailed {
                    position: decoded.envelope.position,
                    source,
                })
            })?;
    }
    Ok(())
}

/// An event of a batch, decoded, with its envelope: what [`Projection::handle_batch`] gets.
#[derive(Debug)]
pub struct Decoded<'a, E> {
    /// The event.
    pub event: E,
    /// Its envelope: stream, version, position, ids, metadata.
    pub envelope: &'a RecordedEvent,
}

/// A batch handler's error that names the event it failed on.
#[derive(Debug, thiserror::Error)]
#[error("event at position {position}: {source}")]
pub struct EventFailed {
    /// The failing event's position.
    pub position: Position,
    /// The handler's error.
    pub source: HandlerError,
}

/// What happens to an event whose handler still fails after the last retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Park it in the dead-letter list and go on with the next event.
    #[default]
    Park,
    /// Stop the runner with the error; the checkpoint stays before the event.
    Stop,
}

/// How often and how patiently a failing handler is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each further one (each wait is drawn
    /// between half and all of that, so runners that failed together do not retry together).
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts: doubling from `initial_backoff` up to
    /// `max_backoff`, with jitter (see [`Backoff`]).
    pub fn backoff(&self, failures: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).delay(failures)
    }
}

/// Where a rebuild or catch-up is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Events read so far.
    pub done: u64,
    /// Events to read in all (grows while writers append).
    pub total: u64,
    /// Events per second so far.
    pub rate: f64,
    /// Estimated time left.
    pub eta: Option<Duration>,
}

impl std::fmt::Display for Progress {
    /// `1200/5000 events (24%), 3400 events/s, about 1s left`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
        write!(
            f,
            "{}/{} events ({percent}%), {:.0} events/s",
            self.done, self.total, self.rate
        )?;
        match self.eta {
            Some(eta) if self.done < self.total => write!(f, ", about {}s left", eta.as_secs()),
            _ => Ok(()),
        }
    }
}

/// A terminal progress bar for [`ProjectionRunner::rebuild`] (feature `progress-bar`): draws
/// on standard error, and stays hidden when that is not a terminal.
///
/// ```no_run
/// # async fn rebuild<S: es_core::projection::ProjectionStore, P: es_core::projection::Projection<S>>(
/// #     mut runner: es_core::projection::ProjectionRunner<S, P>,
/// # ) -> Result<(), es_core::projection::ProjectionError> {
/// runner.rebuild(es_core::projection::progress_bar("order_list")).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "progress-bar")]
pub fn progress_bar(label: &str) -> impl FnMut(Progress) + Send + use<> {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:32}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    move |progress: Progress| {
        bar.set_length(progress.total);
        bar.set_position(progress.done);
        let eta = progress.eta.map_or_else(String::new, |eta| {
            format!(", about {}s left", eta.as_secs())
        });
        bar.set_message(format!("{:.0} events/s{eta}", progress.rate));
        if progress.done >= progress.total {
            bar.finish();
        }
    }
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed.
    #[error("projection `{projection}`: {source}")]
    Store {
        /// The projection.
        projection: String,
        /// The store's error.
        source: StoreError,
    },
    /// Another runner holds the projection.
    #[error("projection `{projection}` is already running elsewhere")]
    AlreadyRunning {
        /// The projection.
        projection: String,
    },
    /// An event failed every attempt and the policy is [`OnFailure::Stop`].
    #[error(
        "projection `{projection}` stopped at event `{event_type}` (stream `{stream}` version {stream_version}, position {position}) after {attempts} attempts: {source}"
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The event's position.
        position: Position,
        /// The event's stream.
        stream: StreamKeyBuf,
        /// The event's stream version.
        stream_version: u64,
        /// The event type.
        event_type: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: HandlerError,
    },
    /// Resetting the read model failed.
    #[error("projection `{projection}` could not reset its read model: {source}")]
    Reset {
        /// The projection.
        projection: String,
        /// The hook's error.
        source: HandlerError,
    },
    /// There is no parked event at that position.
    #[error("projection `{projection}` has no parked event at position {position}")]
    NotParked {
        /// The projection.
        projection: String,
        /// The position asked for.
        position: Position,
    },
}

/// Runs one projection: catch-up, live tailing, rebuilds and parked-event retries.
///
/// Every operation takes the projection's lock first ([`ProjectionError::AlreadyRunning`] when
/// another runner holds it) and releases it before returning.
#[derive(Debug)]
pub struct ProjectionRunner<S: ProjectionStore, P> {
    store: S,
    projection: P,
    tenant: Option<Tenant>,
    batch_size: usize,
    retry: RetryPolicy,
    on_failure: OnFailure,
    idle_timeout: Duration,
    /// Held while an operation runs.
    lock: Option<S::Lock>,
    /// Told every checkpoint this runner commits (set by [`ProjectionRunner::spawn`]).
    checkpoints: Option<tokio::sync::watch::Sender<Option<Position>>>,
}

/// The outcome of handling one event.
enum Handled {
    Done,
    Failed { error: HandlerError, retry: bool },
}

impl<S: ProjectionStore, P: Projection<S>> ProjectionRunner<S, P> {
    /// A runner over every tenant's events, with batches of 500, [`RetryPolicy::default`] and
    /// [`OnFailure::Park`].
    pub fn new(store: S, projection: P) -> Self {
        Self {
            store,
            projection,
            tenant: None,
            batch_size: 500,
            retry: RetryPolicy::default(),
            on_failure: OnFailure::Park,
            idle_timeout: Duration::from_secs(5),
            lock: None,
            checkpoints: None,
        }
    }

    /// Feeds the projection the events of `tenant` only. Its checkpoint, lock and dead letters
    /// are kept apart from those of the same projection for other tenants (under
    /// `<name>@<tenant>`), so one projection type can run once per tenant.
    pub fn for_tenant(mut self, tenant: Tenant) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets how many events are read and committed together.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            max_attempts: retry.max_attempts.max(1),
            ..retry
        };
        self
    }

    /// Sets what happens after the last failed attempt.
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Sets how long live tailing waits for a notification before looking anyway.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The projection, mutably.
    pub fn projection_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// Gives the projection back.
    pub fn into_projection(self) -> P {
        self.projection
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The key of the projection's checkpoint, lock and dead letters: its name, with the
    /// tenant for a runner scoped to one.
    pub fn key(&self) -> String {
        self.scope().key(self.projection.name())
    }

    fn scope(&self) -> LogScope<'_> {
        LogScope::of(self.tenant.as_ref())
    }

    fn store_error(&self, source: StoreError) -> ProjectionError {
        ProjectionError::Store {
            projection: self.key(),
            source,
        }
    }

    /// The projection's checkpoint: where the next batch starts (`Position::START` when it
    /// never ran).
    pub async fn checkpoint(&mut self) -> Result<Position, ProjectionError> {
        let key = self.key();
        match self.store.load_checkpoint(&key).await {
            Ok(checkpoint) => Ok(checkpoint.unwrap_or(Position::START)),
            Err(source) => Err(ProjectionError::Store {
                projection: key,
                source,
            }),
        }
    }

    /// Takes the lock for one operation.
    async fn acquire(&mut self) -> Result<(), ProjectionError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let lock = self
            .store
            .try_lock(&self.key())
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or_else(|| ProjectionError::AlreadyRunning {
                projection: self.key(),
            })?;
        self.lock = Some(lock);
        Ok(())
    }

    /// Releases the lock before an operation returns, so that another runner can take it at
    /// once; a failure only means the lock goes when its connection or lease does.
    async fn release(&mut self) {
        if let Some(lock) = self.lock.take()
            && let Err(error) = self.store.release(lock).await
        {
            tracing::warn!(projection = %self.key(), %error, "failed to release the projection lock; it goes when its connection or lease does");
        }
    }

    /// Runs `operation` holding the lock, and releases it afterwards whatever the outcome.
    async fn locked<T>(
        &mut self,
        operation: impl AsyncFnOnce(&mut Self) -> Result<T, ProjectionError>,
    ) -> Result<T, ProjectionError> {
        self.acquire().await?;
        let result = operation(self).await;
        self.release().await;
        result
    }

    /// Tells the observer, if any, that the checkpoint committed is now `position`.
    fn reached(&self, position: Position) {
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.send_replace(Some(position));
        }
    }

    /// Fences and commits a transaction of this runner.
    async fn commit(&mut self, mut transaction: S::Transaction) -> Result<(), ProjectionError> {
        if let Some(lock) = &self.lock {
            self.store
                .fence(&mut transaction, lock)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        self.store
            .commit(transaction)
            .await
            .map_err(|e| self.store_error(e))
    }

    async fn begin(&mut self) -> Result<S::Transaction, ProjectionError> {
        self.store
            .begin(self.scope())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Processes everything in the log now, then returns the checkpoint reached.
    pub async fn catch_up(&mut self) -> Result<Position, ProjectionError> {
        self.locked(async |runner| runner.catch_up_locked(&mut |_| {}).await)
            .await
    }

    /// Catches up, then tails the log live until `shutdown` completes; stops between batches,
    /// releases the lock and returns the checkpoint reached.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Position, ProjectionError> {
        self.locked(async |runner| runner.run_locked(shutdown).await)
            .await
    }

    async fn run_locked(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Position, ProjectionError> {
        let mut shutdown = pin!(shutdown);
        loop {
            let checkpoint = self.catch_up_until(shutdown.as_mut()).await?;
            let Some(checkpoint) = checkpoint else {
                return self.checkpoint().await;
            };
            let wait = pin!(self.store.wait_for_events(
                self.scope(),
                checkpoint,
                self.idle_timeout
            ));
            match futures_util::future::select(shutdown.as_mut(), wait).await {
                Either::Left(((), _)) => return Ok(checkpoint),
                Either::Right((woken, _)) => woken.map_err(|e| self.store_error(e))?,
            }
        }
    }

    /// Catches up; `None` when `shutdown` completed on the way (it is never polled again then).
    async fn catch_up_until<F: Future<Output = ()>>(
        &mut self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<Option<Position>, ProjectionError> {
        let mut checkpoint = self.checkpoint().await?;
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                return Ok(None);
            }
            let batch = self
                .store
                .read_all(self.scope(), checkpoint, self.batch_size)
                .await
                .map_err(|e| self.store_error(e))?;
            let Some(last) = batch.last() else {
                return Ok(Some(checkpoint));
            };
            let last = last.position;
            self.process_batch(&batch).await?;
            checkpoint = last;
        }
    }

    async fn catch_up_locked(
        &mut self,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Position, ProjectionError> {
        let mut checkpoint = self.checkpoint().await?;
        let started = Instant::now();
        let mut done = 0u64;
        let mut remaining = self
            .store
            .count_after(self.scope(), checkpoint)
            .await
            .map_err(|e| self.store_error(e))?;
        loop {
            let batch = self
                .store
                .read_all(self.scope(), checkpoint, self.batch_size)
                .await
                .map_err(|e| self.store_error(e))?;
            let Some(last) = batch.last() else {
                progress(report(done, done, started));
                return Ok(checkpoint);
            };
            let last = last.position;
            self.process_batch(&batch).await?;
            checkpoint = last;
            done += batch.len() as u64;
            remaining = remaining.saturating_sub(batch.len() as u64);
            if remaining == 0 {
                // Writers appended since the count: count again rather than report over 100%.
                remaining = self
                    .store
                    .count_after(self.scope(), checkpoint)
                    .await
                    .map_err(|e| self.store_error(e))?;
            }
            progress(report(done, done + remaining, started));
        }
    }

    /// Clears the read model (the projection's [`Projection::reset`]), its checkpoint and parked
    /// events in one transaction, then replays the whole log, reporting progress.
    pub async fn rebuild(
        &mut self,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Position, ProjectionError> {
        self.locked(async |runner| {
            tracing::info!(
                projection = %runner.key(),
                "rebuilding projection from the start"
            );
            let mut transaction = runner.begin().await?;
            runner
                .projection
                .reset(&mut transaction)
                .await
                .map_err(|source| ProjectionError::Reset {
                    projection: runner.key(),
                    source,
                })?;
            runner
                .store
                .reset_projection(&mut transaction, &runner.key())
                .await
                .map_err(|e| runner.store_error(e))?;
            runner.commit(transaction).await?;
            runner.catch_up_locked(&mut progress).await
        })
        .await
    }

    /// The projection's parked events.
    pub async fn parked(&mut self) -> Result<Vec<DeadLetter>, ProjectionError> {
        let key = self.key();
        self.store
            .dead_letters(&key)
            .await
            .map_err(|source| ProjectionError::Store {
                projection: key,
                source,
            })
    }

    /// Handles a parked event again (once, no backoff): on success it leaves the dead-letter
    /// list and `true` is returned; on failure it stays, with the new error and attempt count.
    pub async fn retry_parked(&mut self, position: Position) -> Result<bool, ProjectionError> {
        self.locked(async |runner| runner.retry_parked_locked(position).await)
            .await
    }

    async fn retry_parked_locked(&mut self, position: Position) -> Result<bool, ProjectionError> {
        let key = self.key();
        let not_parked = || ProjectionError::NotParked {
            projection: key.clone(),
            position,
        };
        let parked = self.parked().await?;
        let letter = parked
            .into_iter()
            .find(|letter| letter.position == position)
            .ok_or_else(not_parked)?;
        let event = self
            .store
            .find_event(self.scope(), letter.event_id)
            .await
            .map_err(|e| self.store_error(e))?
            .filter(|event| event.position == position)
            .ok_or_else(not_parked)?;
        let mut transaction = self.begin().await?;
        match self.handle(&mut transaction, &event).await {
            Handled::Done => {
                self.store
                    .unpark(&mut transaction, &key, position)
                    .await
                    .map_err(|e| self.store_error(e))?;
                self.commit(transaction).await?;
                Ok(true)
            }
            Handled::Failed { error, .. } => {
                drop(transaction);
                let mut transaction = self.begin().await?;
                let letter = DeadLetter::new(&key, &event, error.to_string(), letter.attempts + 1);
                self.store
                    .park(&mut transaction, &letter)
                    .await
                    .map_err(|e| self.store_error(e))?;
                self.commit(transaction).await?;
                Ok(false)
            }
        }
    }

    async fn handle(&mut self, transaction: &mut S::Transaction, event: &RecordedEvent) -> Handled {
        if !P::Event::knows(&event.event_type) {
            return Handled::Done;
        }
        match event.decode::<P::Event>() {
            Ok(decoded) => match self.projection.handle(transaction, &decoded, event).await {
                Ok(()) => Handled::Done,
                Err(error) => Handled::Failed { error, retry: true },
            },
            Err(error) => Handled::Failed {
                error: Box::new(DecodeFailure(error)),
                retry: false,
            },
        }
    }

    /// The batch in one transaction with its checkpoint, through the projection's
    /// [`Projection::handle_batch`]; if anything fails, the batch is rolled back and redone one
    /// event per transaction, so the failing event is retried (and perhaps parked) alone.
    async fn process_batch(&mut self, batch: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let key = self.key();
        let span = tracing::debug_span!(
            "es.projection.batch",
            projection = %key,
            events = batch.len(),
            elapsed_us = tracing::field::Empty
        );
        let started = Instant::now();
        let mut failure = None;
        let mut decoded = Vec::with_capacity(batch.len());
        for (index, envelope) in batch.iter().enumerate() {
            if !P::Event::knows(&envelope.event_type) {
                continue;
            }
            match envelope.decode::<P::Event>() {
                Ok(event) => decoded.push(Decoded { event, envelope }),
                Err(error) => {
                    let error: HandlerError = Box::new(DecodeFailure(error));
                    failure = Some((Some(index), error, false));
                    break;
                }
            }
        }
        let mut transaction = None;
        if failure.is_none() {
            let mut batch_transaction = self.begin().await?;
            let handled = if decoded.is_empty() {
                Ok(())
            } else {
                self.projection
                    .handle_batch(&mut batch_transaction, &decoded)
                    .await
            };
            match handled {
                Ok(()) => transaction = Some(batch_transaction),
                Err(error) => failure = Some(failed_event(batch, error)),
            }
        }
        drop(decoded);
        if let Some((failed_at, error, retry)) = failure {
            drop(transaction);
            // Every event is redone alone (those after a failing one too: the batch handler
            // may not have reached them); a failure the batch pinned on one event counts as
            // that event's first attempt.
            let mut first_failure = Some((error, retry));
            for (index, event) in batch.iter().enumerate() {
                let earlier = if Some(index) == failed_at {
                    first_failure.take()
                } else {
                    None
                };
                self.process_alone(event, earlier).await?;
            }
        } else if let Some(mut transaction) = transaction {
            let last = batch.last().map_or(Position::START, |e| e.position);
            self.store
                .save_checkpoint(&mut transaction, &key, last)
                .await
                .map_err(|e| self.store_error(e))?;
            self.commit(transaction).await?;
            self.reached(last);
        }
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Handles one event in a transaction of its own, retrying per the policy; `earlier` is a
    /// failure it already had (in its batch), counted as the first attempt.
    async fn process_alone(
        &mut self,
        event: &RecordedEvent,
        mut earlier: Option<(HandlerError, bool)>,
    ) -> Result<(), ProjectionError> {
        let key = self.key();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = match earlier.take() {
                Some((error, retry)) => Err((error, retry)),
                None => {
                    let mut transaction = self.begin().await?;
                    match self.handle(&mut transaction, event).await {
                        Handled::Done => Ok(transaction),
                        Handled::Failed { error, retry } => Err((error, retry)),
                    }
                }
            };
            let (error, retry) = match outcome {
                Ok(mut transaction) => {
                    self.store
                        .save_checkpoint(&mut transaction, &key, event.position)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    self.commit(transaction).await?;
                    self.reached(event.position);
                    return Ok(());
                }
                Err(failure) => failure,
            };
            tracing::warn!(
                projection = %key,
                position = %event.position,
                stream = %event.stream(),
                attempts,
                %error,
                "projection handler failed"
            );
            if retry && attempts < self.retry.max_attempts {
                tokio::time::sleep(self.retry.backoff(attempts)).await;
                continue;
            }
            return match self.on_failure {
                OnFailure::Park => {
                    let mut transaction = self.begin().await?;
                    let letter = DeadLetter::new(&key, event, error.to_string(), attempts);
                    self.store
                        .park(&mut transaction, &letter)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    self.store
                        .save_checkpoint(&mut transaction, &key, event.position)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    self.commit(transaction).await?;
                    self.reached(event.position);
                    Ok(())
                }
                OnFailure::Stop => Err(ProjectionError::Handler {
                    projection: key,
                    position: event.position,
                    stream: event.stream().to_owned(),
                    stream_version: event.stream_version,
                    event_type: event.event_type.clone(),
                    attempts,
                    source: error,
                }),
            };
        }
    }
}

fn report(done: u64, total: u64, started: Instant) -> Progress {
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        done as f64 / seconds
    } else {
        0.0
    };
    let eta =
        (rate > 0.0).then(|| Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate));
    Progress {
        done,
        total,
        rate,
        eta,
    }
}

/// Which event of `batch` a batch handler's error names, if it names one it holds, with the
/// error to count as that event's first attempt.
fn failed_event(
    batch: &[RecordedEvent],
    error: HandlerError,
) -> (Option<usize>, HandlerError, bool) {
    match error.downcast::<EventFailed>() {
        Ok(failed) => match batch.iter().position(|e| e.position == failed.position) {
            Some(index) => (Some(index), failed.source, true),
            None => (None, failed as HandlerError, true),
        },
        Err(error) => (None, error, true),
    }
}

/// A declared event that does not decode: parked or stopped on like a handler error.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the event: {0}")]
struct DecodeFailure(DecodeError);
