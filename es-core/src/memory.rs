//! [`MemoryStore`]: the whole store in process memory, for tests and prototypes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::envelope::{NewEvent, Position, RecordedEvent};
use crate::projection::{DeadLetter, ProjectionStore};
use crate::store::{
    AppendOutcome, AppendedRange, EventStore, EventStream, ExpectedVersion, Snapshot, StoreError,
    Until, check_batch,
};

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
    /// The projections a runner holds.
    locked: Mutex<HashSet<String>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The global log in position order.
    log: Vec<RecordedEvent>,
    /// For each stream, the log indices of its events in version order.
    streams: HashMap<String, Vec<usize>>,
    /// Log index of every event id.
    event_ids: HashMap<Uuid, usize>,
    snapshots: HashMap<String, Snapshot>,
    transactions: u64,
    checkpoints: HashMap<String, Position>,
    /// Parked events per projection, by position.
    dead_letters: HashMap<String, Vec<DeadLetter>>,
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

impl Inner {
    fn current_version(&self, stream_id: &str) -> Option<u64> {
        self.streams
            .get(stream_id)
            .map(|indices| indices.len() as u64)
    }

    /// `Some` when this exact batch is already stored; an error when one of its ids is used
    /// elsewhere; `None` when none of its ids is known.
    fn find_previous_append(
        &self,
        stream_id: &str,
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
        let stream = self
            .streams
            .get(stream_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let start = (first_version - 1) as usize;
        let transaction = existing.position.transaction;
        let in_batch = |slot: usize| stream.get(slot).map(|&index| &self.log[index]);
        // The very same batch: same ids in the same order, written by one append, nothing more.
        let same_batch = existing.event_id == events[0].event_id
            && existing.stream_id == stream_id
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
                existing_stream_id: existing.stream_id.clone(),
                existing_version: existing.stream_version,
            });
        }
        let last = &self.log[stream[(first_version - 1) as usize + events.len() - 1]];
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
        stream_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        check_batch(stream_id, &events)?;
        let mut inner = self.write();
        if let Some(range) = inner.find_previous_append(stream_id, &events)? {
            return Ok(AppendOutcome::AlreadyAppended(range));
        }
        let current = inner.current_version(stream_id);
        if !expected.admits(current) {
            return Err(StoreError::Conflict {
                stream_id: stream_id.to_owned(),
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
                stream_type: stream_type.to_owned(),
                stream_id: stream_id.to_owned(),
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
        inner
            .streams
            .entry(stream_id.to_owned())
            .or_default()
            .extend(indices);
        drop(inner);
        self.inner.appended.notify_waiters();
        Ok(AppendOutcome::Appended(range))
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
        until: Until,
    ) -> EventStream<'a> {
        let start = from_version.max(1) as usize - 1;
        Box::pin(futures_util::stream::unfold(
            (start, Vec::<RecordedEvent>::new().into_iter(), false),
            move |(mut next, mut buffered, mut finished)| async move {
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
                        .get(stream_id)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let chunk: Vec<RecordedEvent> = indices
                        .iter()
                        .skip(next)
                        .take(READ_CHUNK)
                        .map(|&index| &inner.log[index])
                        .take_while(|event| until.includes(event.stream_version, event.recorded_at))
                        .cloned()
                        .collect();
                    finished = chunk.len() < READ_CHUNK;
                    next += chunk.len();
                    buffered = chunk.into_iter();
                }
            },
        ))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.read().current_version(stream_id))
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read();
        let start = inner.log.partition_point(|event| event.position <= after);
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut inner = self.write();
        let newer_saved = inner
            .snapshots
            .get(&snapshot.stream_id)
            .is_some_and(|saved| saved.stream_version > snapshot.stream_version);
        if !newer_saved {
            inner
                .snapshots
                .insert(snapshot.stream_id.clone(), snapshot.clone());
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.read().snapshots.get(stream_id).cloned())
    }
}

/// The changes a projection batch makes to the store, applied together on commit.
#[derive(Debug, Default)]
pub struct MemoryTransaction {
    changes: Vec<Change>,
}

#[derive(Debug)]
enum Change {
    Checkpoint(String, Position),
    Park(DeadLetter),
    Unpark(String, Position),
    Reset(String),
}

/// A projection held by a runner; released on drop.
#[derive(Debug)]
pub struct MemoryLock {
    store: MemoryStore,
    projection: String,
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.store.locked().remove(&self.projection);
    }
}

impl MemoryStore {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner
            .locked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ProjectionStore for MemoryStore {
    type Transaction = MemoryTransaction;
    type Lock = MemoryLock;

    async fn begin(&self) -> Result<MemoryTransaction, StoreError> {
        Ok(MemoryTransaction::default())
    }

    async fn commit(&self, transaction: MemoryTransaction) -> Result<(), StoreError> {
        let mut inner = self.write();
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
            }
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

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        let inner = self.read();
        let index = inner.log.partition_point(|event| event.position < position);
        Ok(inner
            .log
            .get(index)
            .filter(|event| event.position == position)
            .cloned())
    }

    async fn count_after(&self, after: Position) -> Result<u64, StoreError> {
        let inner = self.read();
        Ok((inner.log.len() - inner.log.partition_point(|event| event.position <= after)) as u64)
    }

    async fn try_lock(&self, projection: &str) -> Result<Option<MemoryLock>, StoreError> {
        let acquired = self.locked().insert(projection.to_owned());
        Ok(acquired.then(|| MemoryLock {
            store: self.clone(),
            projection: projection.to_owned(),
        }))
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<(), StoreError> {
        let notified = self.inner.appended.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so an append between the look and the wait still wakes us.
        notified.as_mut().enable();
        if self
            .read()
            .log
            .last()
            .is_some_and(|event| event.position > after)
        {
            return Ok(());
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }
}
