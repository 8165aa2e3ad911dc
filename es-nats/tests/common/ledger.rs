//! The domain of the reliability tests: numbered entries appended to a few streams, and a
//! consumer's SQL read model that records every event it handled, in the order it handled
//! them, so a test can check exactly once and per-stream order.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use es_core::RecordedEvent;
use es_core::projection::{HandlerError, Projection};
use es_core::sql::{SqlDialect, SqlStore, SqlValue, rows_as};
use es_core::{CommandContext, Event, EventStore, ExpectedVersion, NewEvent, StreamKey};

/// The stream type of the entries.
pub(crate) const STREAM_TYPE: &str = "ledger";

/// One entry, numbered by its writer.
#[derive(Debug, Clone, PartialEq, Event)]
pub(crate) enum LedgerEvent {
    /// An entry.
    Entry { n: i64 },
}

/// Appends entry `n` to stream `stream`.
pub(crate) async fn append<S: EventStore>(store: &S, stream: &str, n: i64) {
    let event = NewEvent::encode(&LedgerEvent::Entry { n }, &CommandContext::new().metadata())
        .expect("an entry encodes");
    let mut tries = 0;
    loop {
        match store
            .append(
                StreamKey::new(STREAM_TYPE, stream),
                ExpectedVersion::Any,
                vec![event.clone()],
            )
            .await
        {
            Ok(_) => return,
            // SQLite busy while another process (the relay) holds the file: try again.
            Err(error) if error.is_transient() && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => panic!("appending to `{stream}` failed: {error}"),
        }
    }
}

/// The consumer's read model: table `<table>` with one row per handled event, `seq` giving
/// the order they were handled in. Entries whose number is in `poison` fail.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    name: String,
    table: String,
    poison: Arc<Mutex<HashSet<i64>>>,
}

/// A row of the read model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct Seen {
    pub(crate) stream_id: String,
    pub(crate) version: i64,
    pub(crate) n: i64,
}

impl Ledger {
    /// A ledger named `name` (the consumer's name) writing to `table` (schema-qualified on
    /// PostgreSQL).
    pub(crate) fn new(name: &str, table: &str) -> Self {
        Self {
            name: name.to_owned(),
            table: table.to_owned(),
            poison: Arc::default(),
        }
    }

    /// Makes entry `n` fail (or not) from now on.
    pub(crate) fn set_poison(&self, n: i64, poisoned: bool) {
        let mut poison = self.poison.lock().expect("poison lock");
        if poisoned {
            poison.insert(n);
        } else {
            poison.remove(&n);
        }
    }

    pub(crate) async fn create_table<S: SqlStore>(&self, store: &S) {
        let key = match store.dialect() {
            SqlDialect::Postgres => "seq BIGSERIAL PRIMARY KEY",
            _ => "seq INTEGER PRIMARY KEY AUTOINCREMENT",
        };
        store
            .run(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {} ({key}, stream_id TEXT NOT NULL, \
                     version BIGINT NOT NULL, n BIGINT NOT NULL)",
                    self.table
                ),
                &[],
            )
            .await
            .expect("the ledger table is created");
    }

    /// Every row, in the order the events were handled.
    pub(crate) async fn rows<S: SqlStore>(&self, store: &S) -> Vec<Seen> {
        let rows = store
            .query(
                &format!(
                    "SELECT stream_id, version, n FROM {} ORDER BY seq",
                    self.table
                ),
                &[],
            )
            .await
            .expect("the ledger is read");
        rows_as(rows).expect("ledger rows decode")
    }

    /// How many rows.
    pub(crate) async fn count<S: SqlStore>(&self, store: &S) -> usize {
        self.rows(store).await.len()
    }
}

impl<S: SqlStore> Projection<S> for Ledger {
    type Event = LedgerEvent;

    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &LedgerEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let LedgerEvent::Entry { n } = event;
        if self.poison.lock().expect("poison lock").contains(n) {
            return Err(format!("entry {n} is poisoned").into());
        }
        let version = i64::try_from(envelope.stream_version)?;
        S::execute(
            transaction,
            &format!(
                "INSERT INTO {} (stream_id, version, n) VALUES ($1, $2, $3)",
                self.table
            ),
            &[
                SqlValue::from(envelope.stream_id.as_str()),
                SqlValue::from(version),
                SqlValue::from(*n),
            ],
        )
        .await?;
        Ok(())
    }

    async fn reset(&mut self, transaction: &mut S::Transaction) -> Result<(), HandlerError> {
        S::execute(transaction, &format!("DELETE FROM {}", self.table), &[]).await?;
        Ok(())
    }
}

/// Checks that the rows hold every event of `expected` (stream id -> number of events)
/// exactly once, and each stream's events in version order.
pub(crate) fn assert_exactly_once_in_order(rows: &[Seen], expected: &BTreeMap<String, i64>) {
    let mut per_stream: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        per_stream
            .entry(row.stream_id.clone())
            .or_default()
            .push(row.version);
    }
    let total: i64 = expected.values().sum();
    assert_eq!(rows.len() as i64, total, "rows handled vs events written");
    for (stream, count) in expected {
        let versions = per_stream.get(stream).cloned().unwrap_or_default();
        let wanted: Vec<i64> = (1..=*count).collect();
        assert_eq!(
            versions, wanted,
            "stream `{stream}`: versions in handling order"
        );
    }
    assert_eq!(
        per_stream.len(),
        expected.len(),
        "no stream beyond those written"
    );
}
