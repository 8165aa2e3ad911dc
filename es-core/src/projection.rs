//! Projections: read models built from the global log (P14, P15).
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

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::Either;
use uuid::Uuid;

use crate::envelope::{Position, RecordedEvent};
use crate::event::{DecodeError, Event};
use crate::store::{EventStore, StoreError};

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
    /// The event's stream.
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
pub trait ProjectionStore: EventStore {
    /// The unit of work a batch commits: read-model writes of SQL projections go through it.
    type Transaction: Send;
    /// Held while a runner owns a projection; dropping it releases the projection.
    type Lock: Send;

    /// Starts a transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

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

    /// The event at `position`, if it exists.
    fn read_event(
        &self,
        position: Position,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// How many events the log holds after `after` (for progress reports).
    fn count_after(&self, after: Position) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Takes the projection's lock, or `None` at once if another runner holds it.
    fn try_lock(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send;

    /// Waits until events may have been appended after `after`, or `timeout` passed. Returns
    /// early on a notification; spurious wake-ups are allowed.
    fn wait_for_events(
        &self,
        after: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

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
    /// The wait after the first failure; doubled after each further one.
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
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
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
        "projection `{projection}` stopped at event `{event_type}` (stream `{stream_id}` version {stream_version}, position {position}) after {attempts} attempts: {source}"
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The event's position.
        position: Position,
        /// The event's stream.
        stream_id: String,
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
#[derive(Debug)]
pub struct ProjectionRunner<S, P> {
    store: S,
    projection: P,
    batch_size: usize,
    retry: RetryPolicy,
    on_failure: OnFailure,
    idle_timeout: Duration,
}

/// The outcome of handling one event.
enum Handled {
    Done,
    Failed { error: HandlerError, retry: bool },
}

impl<S: ProjectionStore, P: Projection<S>> ProjectionRunner<S, P> {
    /// A runner with batches of 500, [`RetryPolicy::default`] and [`OnFailure::Park`].
    pub fn new(store: S, projection: P) -> Self {
        Self {
            store,
            projection,
            batch_size: 500,
            retry: RetryPolicy::default(),
            on_failure: OnFailure::Park,
            idle_timeout: Duration::from_secs(5),
        }
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

    fn store_error(&self, source: StoreError) -> ProjectionError {
        ProjectionError::Store {
            projection: self.projection.name().to_owned(),
            source,
        }
    }

    async fn lock(&self) -> Result<S::Lock, ProjectionError> {
        self.store
            .try_lock(self.projection.name())
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or_else(|| ProjectionError::AlreadyRunning {
                projection: self.projection.name().to_owned(),
            })
    }

    /// Processes everything in the log now, then returns the checkpoint reached.
    pub async fn catch_up(&mut self) -> Result<Position, ProjectionError> {
        let _lock = self.lock().await?;
        self.catch_up_locked(&mut |_| {}).await
    }

    /// Catches up, then tails the log live until `shutdown` completes; stops between batches.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Position, ProjectionError> {
        let _lock = self.lock().await?;
        let mut shutdown = pin!(shutdown);
        loop {
            let checkpoint = self.catch_up_until(shutdown.as_mut()).await?;
            let Some(checkpoint) = checkpoint else {
                return self.checkpoint().await;
            };
            let wait = pin!(self.store.wait_for_events(checkpoint, self.idle_timeout));
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
                .read_all(checkpoint, self.batch_size)
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

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        Ok(self
            .store
            .load_checkpoint(self.projection.name())
            .await
            .map_err(|e| self.store_error(e))?
            .unwrap_or(Position::START))
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
            .count_after(checkpoint)
            .await
            .map_err(|e| self.store_error(e))?;
        loop {
            let batch = self
                .store
                .read_all(checkpoint, self.batch_size)
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
                    .count_after(checkpoint)
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
        let _lock = self.lock().await?;
        tracing::info!(
            projection = self.projection.name(),
            "rebuilding projection from the start"
        );
        let mut transaction = self.store.begin().await.map_err(|e| self.store_error(e))?;
        self.projection
            .reset(&mut transaction)
            .await
            .map_err(|source| ProjectionError::Reset {
                projection: self.projection.name().to_owned(),
                source,
            })?;
        self.store
            .reset_projection(&mut transaction, self.projection.name())
            .await
            .map_err(|e| self.store_error(e))?;
        self.store
            .commit(transaction)
            .await
            .map_err(|e| self.store_error(e))?;
        self.catch_up_locked(&mut progress).await
    }

    /// The projection's parked events.
    pub async fn parked(&self) -> Result<Vec<DeadLetter>, ProjectionError> {
        self.store
            .dead_letters(self.projection.name())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Handles a parked event again (once, no backoff): on success it leaves the dead-letter
    /// list; on failure it stays, with the new error and attempt count.
    pub async fn retry_parked(&mut self, position: Position) -> Result<bool, ProjectionError> {
        let name = self.projection.name().to_owned();
        let parked = self.parked().await?;
        let Some(letter) = parked
            .into_iter()
            .find(|letter| letter.position == position)
        else {
            return Err(ProjectionError::NotParked {
                projection: name,
                position,
            });
        };
        let event = self
            .store
            .read_event(position)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or(ProjectionError::NotParked {
                projection: name.clone(),
                position,
            })?;
        let mut transaction = self.store.begin().await.map_err(|e| self.store_error(e))?;
        match self.handle(&mut transaction, &event).await {
            Handled::Done => {
                self.store
                    .unpark(&mut transaction, &name, position)
                    .await
                    .map_err(|e| self.store_error(e))?;
                self.store
                    .commit(transaction)
                    .await
                    .map_err(|e| self.store_error(e))?;
                Ok(true)
            }
            Handled::Failed { error, .. } => {
                drop(transaction);
                let mut transaction = self.store.begin().await.map_err(|e| self.store_error(e))?;
                let letter = DeadLetter::new(&name, &event, error.to_string(), letter.attempts + 1);
                self.store
                    .park(&mut transaction, &letter)
                    .await
                    .map_err(|e| self.store_error(e))?;
                self.store
                    .commit(transaction)
                    .await
                    .map_err(|e| self.store_error(e))?;
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

    /// The batch in one transaction with its checkpoint; if anything fails, the batch is rolled
    /// back and redone one event per transaction, so the failing event is retried alone.
    async fn process_batch(&mut self, batch: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let span = tracing::debug_span!(
            "es.projection.batch",
            projection = self.projection.name(),
            events = batch.len(),
            elapsed_us = tracing::field::Empty
        );
        let started = Instant::now();
        let mut transaction = self.store.begin().await.map_err(|e| self.store_error(e))?;
        let mut failure = None;
        for (index, event) in batch.iter().enumerate() {
            if let Handled::Failed { error, retry } = self.handle(&mut transaction, event).await {
                failure = Some((index, error, retry));
                break;
            }
        }
        if let Some((failed_at, error, retry)) = failure {
            drop(transaction);
            // The events before the failing one are redone; the failing one's attempt in the
            // batch counts as its first.
            let mut first_failure = Some((error, retry));
            for (index, event) in batch.iter().enumerate() {
                let earlier = if index == failed_at {
                    first_failure.take()
                } else {
                    None
                };
                self.process_alone(event, earlier).await?;
            }
        } else {
            let name = self.projection.name().to_owned();
            let last = batch.last().map_or(Position::START, |e| e.position);
            self.store
                .save_checkpoint(&mut transaction, &name, last)
                .await
                .map_err(|e| self.store_error(e))?;
            self.store
                .commit(transaction)
                .await
                .map_err(|e| self.store_error(e))?;
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
        let name = self.projection.name().to_owned();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = match earlier.take() {
                Some((error, retry)) => Err((error, retry)),
                None => {
                    let mut transaction =
                        self.store.begin().await.map_err(|e| self.store_error(e))?;
                    match self.handle(&mut transaction, event).await {
                        Handled::Done => Ok(transaction),
                        Handled::Failed { error, retry } => Err((error, retry)),
                    }
                }
            };
            let (error, retry) = match outcome {
                Ok(mut transaction) => {
                    self.store
                        .save_checkpoint(&mut transaction, &name, event.position)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    return self
                        .store
                        .commit(transaction)
                        .await
                        .map_err(|e| self.store_error(e));
                }
                Err(failure) => failure,
            };
            tracing::warn!(
                projection = %name,
                position = %event.position,
                stream_id = %event.stream_id,
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
                    let mut transaction =
                        self.store.begin().await.map_err(|e| self.store_error(e))?;
                    let letter = DeadLetter::new(&name, event, error.to_string(), attempts);
                    self.store
                        .park(&mut transaction, &letter)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    self.store
                        .save_checkpoint(&mut transaction, &name, event.position)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    self.store
                        .commit(transaction)
                        .await
                        .map_err(|e| self.store_error(e))
                }
                OnFailure::Stop => Err(ProjectionError::Handler {
                    projection: name,
                    position: event.position,
                    stream_id: event.stream_id.clone(),
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

/// A declared event that does not decode: parked or stopped on like a handler error.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the event: {0}")]
struct DecodeFailure(DecodeError);
