//! The order list read model: the `order_list_view` table, one row per order, kept by a
//! transactional projection. Its writes go through the runner's transaction, so each batch's
//! rows and the checkpoint commit together (exactly once). Written once, for every SQL store:
//! SQLite, PostgreSQL, or either behind a `DynStore`.

use chrono::{DateTime, Utc};
use es_core::RecordedEvent;
use es_core::projection::{HandlerError, Projection};
use es_core::sql::{SqlStore, SqlValue, rows_as};

use crate::order::OrderEvent;

/// One row of `order_list_view`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderRow {
    /// The tenant the order belongs to.
    pub tenant: String,
    /// The order (stream) id.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The order total in cents.
    pub total_amount: i64,
    /// `PENDING`, `INVENTORY_RESERVED`, `PAYMENT_PROCESSED`, `CONFIRMED` or `CANCELLED`.
    pub status: String,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it was confirmed.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Why it was cancelled.
    pub cancellation_reason: Option<String>,
}

/// The order list read model: a projection named `order_list` writing `order_list_view`.
#[derive(Debug, Clone)]
pub struct OrderList {
    table: String,
}

impl Default for OrderList {
    fn default() -> Self {
        Self::new()
    }
}

impl OrderList {
    /// The read model in table `order_list_view` (SQLite, or PostgreSQL's search path).
    pub fn new() -> Self {
        Self {
            table: "order_list_view".to_owned(),
        }
    }

    /// The read model in PostgreSQL schema `schema`, beside the store's own tables.
    pub fn in_schema(schema: &str) -> Self {
        Self {
            table: format!("\"{}\".order_list_view", schema.replace('"', "\"\"")),
        }
    }

    /// The qualified table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table if it does not exist.
    pub async fn create_table<S: SqlStore>(&self, store: &S) -> Result<(), es_core::StoreError> {
        let time = store.dialect().timestamp_type();
        let statement = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                tenant TEXT NOT NULL,
                order_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                total_amount BIGINT NOT NULL,
                status TEXT NOT NULL,
                created_at {time} NOT NULL,
                confirmed_at {time},
                cancelled_at {time},
                cancellation_reason TEXT,
                PRIMARY KEY (tenant, order_id)
            )",
            self.table
        );
        store.run(&statement, &[]).await.map(drop)
    }

    /// A tenant's orders, newest first, at most `limit`.
    pub async fn rows<S: SqlStore>(
        &self,
        store: &S,
        tenant: &str,
        limit: i64,
    ) -> Result<Vec<OrderRow>, Box<dyn std::error::Error + Send + Sync>> {
        let rows = store
            .query(
                &format!(
                    "SELECT * FROM {} WHERE tenant = $1 ORDER BY created_at DESC, order_id LIMIT $2",
                    self.table
                ),
                &[tenant.into(), limit.into()],
            )
            .await?;
        Ok(rows_as(rows)?)
    }
}

impl<S: SqlStore> Projection<S> for OrderList {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "order_list"
    }

    async fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &OrderEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let table = &self.table;
        let key = [
            SqlValue::from(&envelope.tenant),
            SqlValue::from(&envelope.stream_id),
        ];
        let (statement, params): (String, Vec<SqlValue>) = match event {
            // Upsert, so that a read model fed at least once (outside a shared transaction)
            // converges too.
            OrderEvent::OrderCreated(created) => (
                format!(
                    "INSERT INTO {table} (tenant, order_id, customer_id, total_amount, status, created_at)
                     VALUES ($1, $2, $3, $4, 'PENDING', $5)
                     ON CONFLICT (tenant, order_id) DO UPDATE SET customer_id = excluded.customer_id,
                         total_amount = excluded.total_amount, status = 'PENDING',
                         created_at = excluded.created_at, confirmed_at = NULL, cancelled_at = NULL,
                         cancellation_reason = NULL"
                ),
                vec![
                    created.customer_id.as_str().into(),
                    created.total_amount.into(),
                    created.created_at.into(),
                ],
            ),
            OrderEvent::InventoryReserved(_) => status(table, "INVENTORY_RESERVED"),
            OrderEvent::PaymentProcessed(_) => status(table, "PAYMENT_PROCESSED"),
            OrderEvent::OrderConfirmed(confirmed) => (
                format!(
                    "UPDATE {table} SET status = 'CONFIRMED', confirmed_at = $3 \
                     WHERE tenant = $1 AND order_id = $2"
                ),
                vec![confirmed.confirmed_at.into()],
            ),
            OrderEvent::OrderCancelled(cancelled) => (
                format!(
                    "UPDATE {table} SET status = 'CANCELLED', cancelled_at = $3, \
                     cancellation_reason = $4 WHERE tenant = $1 AND order_id = $2"
                ),
                vec![
                    cancelled.cancelled_at.into(),
                    cancelled.reason.as_str().into(),
                ],
            ),
        };
        let params: Vec<SqlValue> = key.into_iter().chain(params).collect();
        let updated = S::execute(transaction, &statement, &params).await?;
        if updated == 0 {
            // The global log delivers an order's creation first: a missing row means the table
            // was tampered with, so fail (retry, then park) rather than skip.
            return Err(format!(
                "{table} has no row for order `{}` (event {} at version {})",
                envelope.stream_id, envelope.event_type, envelope.stream_version
            )
            .into());
        }
        Ok(())
    }

    async fn reset(&mut self, transaction: &mut S::Transaction) -> Result<(), HandlerError> {
        S::execute(transaction, &format!("DELETE FROM {}", self.table), &[]).await?;
        Ok(())
    }
}

/// The statement that moves an order to `status`.
fn status(table: &str, status: &str) -> (String, Vec<SqlValue>) {
    (
        format!("UPDATE {table} SET status = $3 WHERE tenant = $1 AND order_id = $2"),
        vec![status.into()],
    )
}
