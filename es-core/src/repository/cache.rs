//! [`StateCache`]: the states of recently used streams, behind
//! [`Repository::with_cache`](super::Repository::with_cache).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Loaded;

/// How many stale touches the recency queue may hold beyond one per entry before it is
/// compacted; keeps small caches from compacting on every touch.
const COMPACT_SLACK: usize = 32;

/// The state and version of up to `capacity` streams, shared by a repository's clones; the
/// least recently used stream is evicted first. One lock, held for map operations only, never
/// across an `.await`.
pub(super) struct StateCache<A> {
    states: Mutex<Lru<A>>,
    /// `<A as Clone>::clone`, captured where `A: Clone` is known, so that the repository needs
    /// no `Clone` bound elsewhere.
    clone: fn(&A) -> A,
}

impl<A> StateCache<A> {
    pub(super) fn new(capacity: usize, clone: fn(&A) -> A) -> Self {
        Self {
            states: Mutex::new(Lru::new(capacity)),
            clone,
        }
    }

    /// A copy of the stream's state, if cached; marks the stream most recently used.
    pub(super) fn get(&self, id: &str) -> Option<Loaded<A>> {
        self.lock().get(id, self.clone)
    }

    /// Caches `state` as the stream's state at `version`, unless a newer one is cached.
    pub(super) fn put(&self, id: &str, state: &A, version: u64) {
        // Cloned before taking the lock: other streams' commands need not wait for it.
        let loaded = Loaded {
            state: (self.clone)(state),
            version,
            started_from: super::StartedFrom::Cache(version),
        };
        self.lock().put(id, loaded);
    }

    /// Forgets the stream.
    pub(super) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> MutexGuard<'_, Lru<A>> {
        // No operation can leave the map and the queue inconsistent in a way that matters:
        // stale touches are skipped, and a missing entry is only a miss.
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<A> fmt::Debug for StateCache<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states = self.lock();
        f.debug_struct("StateCache")
            .field("capacity", &states.capacity)
            .field("streams", &states.entries.len())
            .finish()
    }
}

/// A map that evicts its least recently used entry beyond `capacity`, in O(1) amortised.
///
/// Recency is a queue of touches `(stream, generation)`, oldest first; each entry keeps the
/// generation of its latest touch, so any older touch of it in the queue is stale and skipped
/// when it reaches the front (lazy deletion). When stale touches pile up the queue is compacted,
/// which costs at most as much as the touches that made it necessary.
struct Lru<A> {
    capacity: usize,
    entries: HashMap<Arc<str>, Entry<A>>,
    touches: VecDeque<(Arc<str>, u64)>,
    generation: u64,
}

struct Entry<A> {
    /// The map's key, kept here to push touches without looking it up again.
    id: Arc<str>,
    loaded: Loaded<A>,
    /// The generation of the entry's latest touch.
    generation: u64,
}

impl<A> Lru<A> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            touches: VecDeque::new(),
            generation: 0,
        }
    }

    fn get(&mut self, id: &str, clone: fn(&A) -> A) -> Option<Loaded<A>> {
        let entry = self.entries.get_mut(id)?;
        self.generation += 1;
        entry.generation = self.generation;
        self.touches.push_back((entry.id.clone(), self.generation));
        let loaded = Loaded {
            state: clone(&entry.loaded.state),
            version: entry.loaded.version,
            started_from: entry.loaded.started_from,
        };
        self.compact();
        Some(loaded)
    }

    fn put(&mut self, id: &str, loaded: Loaded<A>) {
        if self.capacity == 0 {
            return;
        }
        self.generation += 1;
        match self.entries.get_mut(id) {
            Some(entry) => {
                // Versions only grow: a state older than the cached one comes from a command or
                // a load that finished late, and would undo newer news.
                if loaded.version >= entry.loaded.version {
                    entry.loaded = loaded;
                }
                entry.generation = self.generation;
                self.touches.push_back((entry.id.clone(), self.generation));
            }
            None => {
                let id: Arc<str> = Arc::from(id);
                self.touches.push_back((id.clone(), self.generation));
                self.entries.insert(
                    id.clone(),
                    Entry {
                        id,
                        loaded,
                        generation: self.generation,
                    },
                );
                self.evict();
            }
        }
        self.compact();
    }

    fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    /// Drops least recently used entries until the capacity holds.
    fn evict(&mut self) {
        while self.entries.len() > self.capacity {
            // Every entry has a live touch in the queue, so it is not empty here.
            let Some((id, generation)) = self.touches.pop_front() else {
                return;
            };
            if self.is_live(&id, generation) {
                self.entries.remove(&id);
            }
        }
    }

    /// Drops stale touches once they outnumber the live ones (one per entry) by the slack.
    fn compact(&mut self) {
        if self.touches.len() > 2 * self.entries.len() + COMPACT_SLACK {
            let entries = &self.entries;
            self.touches.retain(|(id, generation)| {
                entries
                    .get(id)
                    .is_some_and(|entry| entry.generation == *generation)
            });
        }
    }

    fn is_live(&self, id: &str, generation: u64) -> bool {
        self.entries
            .get(id)
            .is_some_and(|entry| entry.generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> Lru<u64> {
        Lru::new(capacity)
    }

    fn put(cache: &mut Lru<u64>, id: &str, version: u64) {
        cache.put(
            id,
            Loaded {
                state: version * 10,
                version,
                started_from: super::super::StartedFrom::Cache(version),
            },
        );
    }

    fn version(cache: &mut Lru<u64>, id: &str) -> Option<u64> {
        cache.get(id, u64::clone).map(|loaded| loaded.version)
    }

    #[test]
    fn evicts_the_least_recently_used_stream() {
        let mut cache = cache(2);
        put(&mut cache, "a", 1);
        put(&mut cache, "b", 1);
        assert_eq!(version(&mut cache, "a"), Some(1)); // b is now the least recently used
        put(&mut cache, "c", 1);
        assert_eq!(version(&mut cache, "b"), None);
        assert_eq!(version(&mut cache, "a"), Some(1));
        assert_eq!(version(&mut cache, "c"), Some(1));
        put(&mut cache, "c", 2); // a put touches too: a is now the least recently used
        put(&mut cache, "d", 1);
        assert_eq!(version(&mut cache, "a"), None);
        assert_eq!(cache.entries.len(), 2);
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one() {
        let mut cache = cache(4);
        put(&mut cache, "a", 5);
        put(&mut cache, "a", 3);
        let loaded = cache.get("a", u64::clone).unwrap();
        assert_eq!((loaded.version, loaded.state), (5, 50));
        put(&mut cache, "a", 6);
        assert_eq!(version(&mut cache, "a"), Some(6));
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut cache = cache(0);
        put(&mut cache, "a", 1);
        assert_eq!(version(&mut cache, "a"), None);
        assert!(cache.touches.is_empty());
    }

    #[test]
    fn removed_streams_miss_and_their_touches_are_skipped() {
        let mut cache = cache(2);
        put(&mut cache, "a", 1);
        put(&mut cache, "b", 1);
        cache.remove("a");
        assert_eq!(version(&mut cache, "a"), None);
        put(&mut cache, "c", 1);
        put(&mut cache, "a", 2); // evicts b, the oldest live touch; a's old touch is skipped
        assert_eq!(version(&mut cache, "b"), None);
        assert_eq!(version(&mut cache, "c"), Some(1));
        assert_eq!(version(&mut cache, "a"), Some(2));
    }

    #[test]
    fn the_recency_queue_stays_bounded_under_repeated_touches() {
        let mut cache = cache(3);
        for round in 0..10_000u64 {
            let id = ["a", "b", "c", "d"][(round % 4) as usize];
            put(&mut cache, id, round);
            version(&mut cache, "a");
            assert!(cache.entries.len() <= 3);
            assert!(cache.touches.len() <= 2 * 3 + COMPACT_SLACK + 1);
        }
        // a is touched on every round, so it is never the one evicted.
        assert_eq!(version(&mut cache, "a"), Some(9_996));
    }
}
