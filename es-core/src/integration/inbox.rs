//! The inbox: which events a consumer has processed, recorded in the transaction of the
//! consumer's own writes, so that a message delivered again (a broker redelivers after a lost
//! acknowledgement, a re-drive publishes it again) changes nothing the second time.

use std::future::Future;

use uuid::Uuid;

use crate::projection::ProjectionStore;
use crate::store::StoreError;

/// A [`ProjectionStore`] that keeps an inbox: the ids of the events each consumer processed.
///
/// The inbox is not tenant-scoped: an event id is unique across tenants.
///
/// ```
/// use es_core::integration::InboxStore;
/// use es_core::projection::ProjectionStore;
/// use es_core::{LogScope, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::StoreError> {
/// let store = MemoryStore::new();
/// let event_id = uuid::Uuid::new_v4();
/// let mut transaction = store.begin(LogScope::AllTenants).await?;
/// assert!(store.record_processed(&mut transaction, "billing", event_id).await?);
/// store.commit(transaction).await?;
///
/// let mut transaction = store.begin(LogScope::AllTenants).await?;
/// assert!(!store.record_processed(&mut transaction, "billing", event_id).await?, "seen");
/// # Ok(())
/// # }
/// ```
pub trait InboxStore: ProjectionStore {
    /// Records, within `transaction`, that `consumer` processed the event `event_id`: `true`
    /// when it is new, `false` when it was already processed (by a committed transaction, or
    /// earlier in this one). The record commits or rolls back with the transaction, and so
    /// with the consumer's writes made through it.
    fn record_processed(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        event_id: Uuid,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
