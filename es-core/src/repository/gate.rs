//! [`Gates`]: one queue per stream, so that the commands of one process on one stream run one
//! after the other instead of racing each other to the store and retrying on conflicts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

/// How many idle gates the map may hold before it is swept (at least).
const SWEEP_AT: usize = 1024;

/// The gates of the streams commands are running on, shared by a repository's clones. A gate
/// lives while a command holds it or waits for it; the last one out removes it.
#[derive(Debug)]
pub(super) struct Gates {
    open: Mutex<Open>,
}

#[derive(Debug)]
struct Open {
    gates: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// The map's size at which idle gates (left by cancelled waiters) are swept.
    sweep_at: usize,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            open: Mutex::new(Open {
                gates: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }
}

/// Held while a command runs on a stream; the next command on the stream waits for it.
pub(super) struct Entered {
    gates: Arc<Gates>,
    key: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Gates {
    /// Waits until no other command of this repository runs on stream `key`.
    pub(super) async fn enter(self: &Arc<Self>, key: String) -> Entered {
        let gate = {
            let mut open = self.lock();
            let gate = open.gates.entry(key.clone()).or_default().clone();
            if open.gates.len() >= open.sweep_at {
                // Gates whose waiters were cancelled are held by the map alone.
                open.gates.retain(|_, gate| Arc::strong_count(gate) > 1);
                open.sweep_at = (open.gates.len() * 2).max(SWEEP_AT);
            }
            gate
        };
        let guard = gate.clone().lock_owned().await;
        Entered {
            gates: self.clone(),
            key,
            gate,
            guard: Some(guard),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // The map stays consistent whatever panicked: an entry is only inserted or removed.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut open = self.gates.lock();
        // Clones are made under the map's lock: two references (the map's and ours) mean
        // nobody else waits for this gate.
        if Arc::strong_count(&self.gate) == 2 {
            open.gates.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_on_one_stream_queue_and_gates_go_when_unused() {
        let gates = Arc::new(Gates::default());
        let first = gates.enter("a".to_owned()).await;
        let other = gates.enter("b".to_owned()).await;
        let waiting = tokio::spawn({
            let gates = gates.clone();
            async move { drop(gates.enter("a".to_owned()).await) }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second command on `a` waits");
        drop(first);
        waiting.await.unwrap();
        drop(other);
        assert!(
            gates.lock().gates.is_empty(),
            "no gate outlives its commands"
        );
    }

    #[tokio::test]
    async fn gates_of_cancelled_waiters_are_swept() {
        let gates = Arc::new(Gates::default());
        let held = gates.enter("held".to_owned()).await;
        for n in 0..SWEEP_AT * 3 {
            let key = format!("k{n}");
            let entered = gates.enter(key.clone()).await;
            let mut waiter = Box::pin(gates.enter(key));
            // Polled once: it queues behind `entered`.
            let queued = tokio::time::timeout(std::time::Duration::ZERO, &mut waiter).await;
            assert!(queued.is_err());
            // The holder leaves while the waiter waits, so the gate stays; then the waiter gives
            // up, leaving the gate to the map alone.
            drop(entered);
            drop(waiter);
        }
        assert!(
            gates.lock().gates.len() <= SWEEP_AT * 2,
            "{}",
            gates.lock().gates.len()
        );
        drop(held);
    }
}
