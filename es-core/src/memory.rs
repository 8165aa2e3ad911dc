//! [`MemoryStore`]: the whole store in process memory, for tests and prototypes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::contract;
use crate::envelope::{NewEvent, Position, RecordedEvent};
use crate::projection::{DeadLetter, ProjectionStore};
use crate::store::{
    AppendOutcome, AppendedRange, EventStore, EventStream, ExpectedVersion, Snapshot, StoreError,
    Until,
};
use crate::stream::{LogScope, StreamKey};

/// How many events a stream read copies out per lock acquisition.
const READ_CHUNK: usize = 256;

/// An event store in memory: correct under concurrent use from many tasks (one lock, never held
/// across an `.await`), gone when the last clone is dropped.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: RwLock<Inner>,
    /// Woken after every append, for live projections.
    appended: tokio::sync::Notify,
    /// The projections a runner holds, with the token of the lock that holds each.
    locked: Mutex<HashMap<String, u64>>,
    /// The last lock token handed out.
    lock_tokens: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The global log in position order.
    log: Vec<RecordedEvent>,
    /// For each stream (by [`map_key`]), the log indices of its events in version order.
    streams: HashMap<String, Vec<usize>>,
    /// Log index of every event id.
    event_ids: HashMap<Uuid, usize>,
    snapshots: HashMap<String, Snapshot>,
    transactions: u64,
    checkpoints: HashMap<String, Position>,
    /// Parked events per projection, by position.
    dead_letters: HashMap<String, Vec<DeadLetter>>,
    /// The inbox: the events each consumer processed.
    inbox: HashSet<(String, Uuid)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated: appends validate
        // everything before the first mutation.
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A stream's key in the maps: its three parts joined by NUL, which no part may contain (see
/// the input contract), so distinct streams never share a key.
fn map_key(stream: StreamKey<'_>) -> String {
    let mut key =
        String::with_capacity(stream.tenant.len() + stream.stream_type.len() + stream.id.len() + 2);
    for (i, part) in [stream.tenant, stream.stream_type, stream.id]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            key.push('\0');
        }
        key.push_str(part);
    }
    key
}

impl Inner {
    fn current_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|indices| indices.len() as u64)
    }

    /// `Some` when this exact batch is already stored; an error when one of its ids is used
    /// elsewhere; `None` when none of its ids is known.
    fn find_previous_append(
        &self,
        stream: StreamKey<'_>,
        events: &[NewEvent],
    ) -> Result<Option<AppendedRange>, StoreError> {
        let Some((event_id, first_index)) = events.iter().find_map(|event| {
            self.event_ids
                .get(&event.event_id)
                .map(|&index| (event.event_id, index))
        }) else {
            return Ok(None);
        };
        let existing = &self.log[first_index];
        let first_version = existing.stream_version;
        let key = map_key(stream);
        let indices = self
            .streams
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let start = (first_version - 1) as usize;
        let transaction = existing.position.transaction;
        let in_batch = |slot: usize| indices.get(slot).map(|&index| &self.log[index]);
        // The very same batch: same ids in the same order, written by one append, nothing more.
        let same_batch = existing.event_id == events[0].event_id
            && existing.stream() == stream
            && events.iter().enumerate().all(|(offset, event)| {
                in_batch(start + offset).is_some_and(|stored| {
                    stored.event_id == event.event_id && stored.position.transaction == transaction
                })
            })
            && in_batch(start + events.len())
                .is_none_or(|next| next.position.transaction != transaction)
            // ...and it starts where that append started: its tail alone is not the batch.
            && (start == 0 || in_batch(start - 1).is_none_or(|prev| prev.position.transaction != transaction));
        if !same_batch {
            return Err(StoreError::DuplicateEventId {
                event_id,
                existing_stream: existing.stream().to_owned(),
                existing_version: existing.stream_version,
            });
        }
        let last = &self.log[indices[(first_version - 1) as usize + events.len() - 1]];
        Ok(Some(AppendedRange {
            first_version,
            last_version: last.stream_version,
            last_position: last.position,
        }))
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: StreamKey<'_>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        contract::check_append(stream, &events)?;
        let key = map_key(stream);
        let mut inner = self.write();
        if let Some(range) = inner.find_previous_append(stream, &events)? {
            return Ok(AppendOutcome::AlreadyAppended(range));
        }
        let current = inner.current_version(&key);
        if !expected.admits(current) {
            return Err(StoreError::Conflict {
                stream: stream.to_owned(),
                expected,
                actual: current,
            });
        }
        inner.transactions += 1;
        let transaction = inner.transactions;
        let recorded_at = Utc::now();
        let first_version = current.unwrap_or(0) + 1;
        let mut indices = Vec::with_capacity(events.len());
        for (offset, event) in events.into_iter().enumerate() {
            let index = inner.log.len();
            inner.event_ids.insert(event.event_id, index);
            inner.log.push(RecordedEvent {
                tenant: stream.tenant.to_owned(),
                stream_type: stream.stream_type.to_owned(),
                stream_id: stream.id.to_owned(),
                stream_version: first_version + offset as u64,
                position: Position {
                    transaction,
                    sequence: index as u64 + 1,
                },
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
                recorded_at,
            });
            indices.push(index);
        }
        let last = &inner.log[*indices.last().expect("the batch is not empty")];
        let range = AppendedRange {
            first_version,
            last_version: last.stream_version,
            last_position: last.position,
        };
        inner.streams.entry(key).or_default().extend(indices);
        drop(inner);
        self.inner.appended.notify_waiters();
        Ok(AppendOutcome::Appended(range))
    }

    fn read_stream<'a>(
        &'a self,
        stream: StreamKey<'a>,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        if let Err(error) = contract::check_stream(stream) {
            return Box::pin(futures_util::stream::iter([Err(error)]));
        }
        let key = map_key(stream);
        let start = from_version.max(1) as usize - 1;
        Box::pin(futures_util::stream::unfold(
            (start, Vec::<RecordedEvent>::new().into_iter(), false),
            move |(mut next, mut buffered, mut finished)| {
                let key = key.clone();
                async move {
                    loop {
                        if let Some(event) = buffered.next() {
                            return Some((Ok(event), (next, buffered, finished)));
                        }
                        if finished {
                            return None;
                        }
                        let inner = self.read();
                        let indices = inner
                            .streams
                            .get(&key)
                            .map(Vec::as_slice)
                            .unwrap_or_default();
                        let chunk: Vec<RecordedEvent> = indices
                            .iter()
                            .skip(next)
                            .take(READ_CHUNK)
                            .map(|&index| &inner.log[index])
                            .take_while(|event| {
                                until.includes(event.stream_version, event.recorded_at)
                            })
                            .cloned()
                            .collect();
                        finished = chunk.len() < READ_CHUNK;
                        next += chunk.len();
                        buffered = chunk.into_iter();
                    }
                }
            },
        ))
    }

    async fn stream_version(&self, stream: StreamKey<'_>) -> Result<Option<u64>, StoreError> {
        contract::check_stream(stream)?;
        Ok(self.read().current_version(&map_key(stream)))
    }

    async fn read_all(
        &self,
        scope: LogScope<'_>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read();
        let start = inner.log.partition_point(|event| event.position <= after);
        Ok(inner.log[start..]
            .iter()
            .filter(|event| scope.includes(&event.tenant))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn find_event(
        &self,
        scope: LogScope<'_>,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let inner = self.read();
        Ok(inner
            .event_ids
            .get(&event_id)
            .map(|&index| &inner.log[index])
            .filter(|event| scope.includes(&event.tenant))
            .cloned())
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        contract::check_snapshot_state(snapshot.stream(), snapshot.state.as_str())?;
        let key = map_key(snapshot.stream());
        let mut inner = self.write();
        let newer_saved = inner
            .snapshots
            .get(&key)
            .is_some_and(|saved| saved.stream_version > snapshot.stream_version);
        if !newer_saved {
            inner.snapshots.insert(key, snapshot.clone());
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: StreamKey<'_>) -> Result<Option<Snapshot>, StoreError> {
        contract::check_stream(stream)?;
        Ok(self.read().snapshots.get(&map_key(stream)).cloned())
    }
}

/// The changes a projection batch makes to the store, applied together on commit.
///
/// An in-memory read model commits with the checkpoint through
/// [`on_commit`](Self::on_commit): its changes run when, and only when, the transaction commits.
#[derive(Default)]
pub struct MemoryTransaction {
    changes: Vec<Change>,
    on_commit: Vec<Box<dyn FnOnce() + Send>>,
    /// The lock the transaction was fenced with, checked again at commit.
    fenced: Option<(String, u64)>,
}

impl MemoryTransaction {
    /// Runs `change` when the transaction commits (never if it is dropped): how an in-memory
    /// read model keeps its updates and the projection's checkpoint together.
    pub fn on_commit(&mut self, change: impl FnOnce() + Send + 'static) {
        self.on_commit.push(Box::new(change));
    }
}

impl std::fmt::Debug for MemoryTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransaction")
            .field("changes", &self.changes)
            .field("on_commit", &self.on_commit.len())
            .finish()
    }
}

#[derive(Debug)]
enum Change {
    Checkpoint(String, Position),
    Park(DeadLetter),
    Unpark(String, Position),
    Reset(String),
    Processed(String, Uuid),
}

/// A projection held by a runner; released on drop.
#[derive(Debug)]
pub struct MemoryLock {
    store: MemoryStore,
    projection: String,
    token: u64,
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        let mut locked = self.store.locked();
        if locked.get(&self.projection) == Some(&self.token) {
            locked.remove(&self.projection);
        }
    }
}

impl MemoryStore {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.inner
            .locked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the projection's lock away from the runner holding it, as an operator would from a
    /// stuck runner: that runner's next commit fails with [`StoreError::LockLost`], and another
    /// runner can take the projection.
    pub fn break_lock(&self, projection: &str) {
        self.locked().remove(projection);
    }
}

impl crate::integration::InboxStore for MemoryStore {
    /// Recorded in the transaction, kept by the store on commit. Of two uncommitted
    /// transactions that both record one event, the second to commit fails with a transient
    /// [`StoreError::Unavailable`]: retried, it finds the event processed.
    async fn record_processed(
        &self,
        transaction: &mut MemoryTransaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, StoreError> {
        let key = (consumer.to_owned(), event_id);
        let in_transaction = transaction.changes.iter().any(
            |change| matches!(change, Change::Processed(c, id) if *c == key.0 && *id == event_id),
        );
        if in_transaction || self.read().inbox.contains(&key) {
            return Ok(false);
        }
        transaction.changes.push(Change::Processed(key.0, event_id));
        Ok(true)
    }
}

impl ProjectionStore for MemoryStore {
    type Transaction = MemoryTransaction;
    type Lock = MemoryLock;

    async fn begin(&self, _scope: LogScope<'_>) -> Result<MemoryTransaction, StoreError> {
        Ok(MemoryTransaction::default())
    }

    async fn commit(&self, transaction: MemoryTransaction) -> Result<(), StoreError> {
        // The projection lock is checked again under the store's lock, so that a lock broken
        // after the fence cannot slip a commit through.
        let locks = self.locked();
        let mut inner = self.write();
        if let Some((projection, token)) = &transaction.fenced
            && locks.get(projection) != Some(token)
        {
            return Err(StoreError::LockLost {
                projection: projection.clone(),
            });
        }
        drop(locks);
        // Two transactions that both recorded an event as new: the later commit fails, as the
        // second insert of a primary key does in SQL, and retrying it finds the event processed.
        for change in &transaction.changes {
            if let Change::Processed(consumer, event_id) = change
                && inner.inbox.contains(&(consumer.clone(), *event_id))
            {
                return Err(StoreError::unavailable(
                    format!(
                        "record event {event_id} as processed by consumer `{}`",
                        crate::stream::shown(consumer)
                    ),
                    "another transaction recorded it first; retry",
                ));
            }
        }
        for change in transaction.changes {
            match change {
                Change::Checkpoint(projection, position) => {
                    inner.checkpoints.insert(projection, position);
                }
                Change::Park(letter) => {
                    let letters = inner
                        .dead_letters
                        .entry(letter.projection.clone())
                        .or_default();
                    letters.retain(|existing| existing.position != letter.position);
                    letters.push(letter);
                    letters.sort_by_key(|letter| letter.position);
                }
                Change::Unpark(projection, position) => {
                    if let Some(letters) = inner.dead_letters.get_mut(&projection) {
                        letters.retain(|letter| letter.position != position);
                    }
                }
                Change::Reset(projection) => {
                    inner.checkpoints.remove(&projection);
                    inner.dead_letters.remove(&projection);
                }
                Change::Processed(consumer, event_id) => {
                    inner.inbox.insert((consumer, event_id));
                }
            }
        }
        drop(inner);
        for change in transaction.on_commit {
            change();
        }
        Ok(())
    }

    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Position>, StoreError> {
        Ok(self.read().checkpoints.get(projection).copied())
    }

    async fn save_checkpoint(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        transaction
            .changes
            .push(Change::Checkpoint(projection.to_owned(), position));
        Ok(())
    }

    async fn park(
        &self,
        transaction: &mut MemoryTransaction,
        dead_letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        transaction.changes.push(Change::Park(dead_letter.clone()));
        Ok(())
    }

    async fn unpark(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
        position: Position,
    ) -> Result<(), StoreError> {
        transaction
            .changes
            .push(Change::Unpark(projection.to_owned(), position));
        Ok(())
    }

    async fn reset_projection(
        &self,
        transaction: &mut MemoryTransaction,
        projection: &str,
    ) -> Result<(), StoreError> {
        transaction
            .changes
            .push(Change::Reset(projection.to_owned()));
        Ok(())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .read()
            .dead_letters
            .get(projection)
            .cloned()
            .unwrap_or_default())
    }

    async fn try_lock(&self, projection: &str) -> Result<Option<MemoryLock>, StoreError> {
        let mut locked = self.locked();
        if locked.contains_key(projection) {
            return Ok(None);
        }
        let token = self
            .inner
            .lock_tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        locked.insert(projection.to_owned(), token);
        Ok(Some(MemoryLock {
            store: self.clone(),
            projection: projection.to_owned(),
            token,
        }))
    }

    async fn fence(
        &self,
        transaction: &mut MemoryTransaction,
        lock: &MemoryLock,
    ) -> Result<(), StoreError> {
        if self.locked().get(&lock.projection) != Some(&lock.token) {
            return Err(StoreError::LockLost {
                projection: lock.projection.clone(),
            });
        }
        transaction.fenced = Some((lock.projection.clone(), lock.token));
        Ok(())
    }

    async fn count_after(&self, scope: LogScope<'_>, after: Position) -> Result<u64, StoreError> {
        let inner = self.read();
        let start = inner.log.partition_point(|event| event.position <= after);
        Ok(inner.log[start..]
            .iter()
            .filter(|event| scope.includes(&event.tenant))
            .count() as u64)
    }

    async fn wait_for_events(
        &self,
        scope: LogScope<'_>,
        after: Position,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let notified = self.inner.appended.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so an append between the look and the wait still wakes us.
        notified.as_mut().enable();
        {
            let inner = self.read();
            let start = inner.log.partition_point(|event| event.position <= after);
            if inner.log[start..]
                .iter()
                .any(|event| scope.includes(&event.tenant))
            {
                return Ok(());
            }
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }
}
