//! The order list read model: the `order_list_view` table, one row per order, kept by a
//! transactional projection. Its writes go through the runner's transaction, so each batch's
//! rows and the checkpoint commit together (exactly once). Written once, for every SQL store:
//! SQLite, PostgreSQL, or either behind a `DynStore`.
//!
//! A batch is written set-based: its events are folded into one change per order, then the
//! orders placed in the batch go in with one multi-row upsert and the others change with one
//! `UPDATE ... FROM (VALUES ...)`, whatever the batch's size (up to [`ROWS_PER_STATEMENT`]
//! orders per statement). `handle` is the same logic for one event, which the runner uses to
//! find the bad event of a failing batch.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use es_core::RecordedEvent;
use es_core::projection::{Decoded, HandlerError, Projection};
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

    /// The read model in table `table`, an SQL table name used as written (quote and qualify
    /// it yourself): a second copy of the read model, say.
    pub fn with_table(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
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

    async fn handle_batch(
        &mut self,
        transaction: &mut S::Transaction,
        events: &[Decoded<'_, OrderEvent>],
    ) -> Result<(), HandlerError> {
        let changes = fold(events);
        let (placed, changed): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .partition(|change| change.placed.is_some());
        for rows in placed.chunks(ROWS_PER_STATEMENT) {
            let (statement, params) = self.upsert_placed(rows);
            S::execute(transaction, &statement, &params).await?;
        }
        let mut groups: Vec<Vec<&Change<'_>>> = Vec::new();
        for change in &changed {
            match groups
                .iter_mut()
                .find(|group| columns_of(group[0]) == columns_of(change))
            {
                Some(group) => group.push(change),
                None => groups.push(vec![change]),
            }
        }
        for rows in groups
            .iter()
            .flat_map(|group| group.chunks(ROWS_PER_STATEMENT))
        {
            let (statement, params) = self.update_changed(rows);
            let updated = S::execute(transaction, &statement, &params).await?;
            if updated != rows.len() as u64 {
                // Some order has no row: `handle`, one event at a time, says which.
                return Err(format!(
                    "{} has rows for {updated} of the {} orders the batch changes",
                    self.table,
                    rows.len()
                )
                .into());
            }
        }
        Ok(())
    }
}

/// The order list through its per-event `handle` alone (the default batch handler, one
/// statement per event): the reference the set-based batches are compared with.
#[derive(Debug, Clone)]
pub struct PerEvent(pub OrderList);

impl<S: SqlStore> Projection<S> for PerEvent {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "order_list_per_event"
    }

    async fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &OrderEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Projection::<S>::handle(&mut self.0, transaction, event, envelope).await
    }

    async fn reset(&mut self, transaction: &mut S::Transaction) -> Result<(), HandlerError> {
        Projection::<S>::reset(&mut self.0, transaction).await
    }
}

/// The most orders one statement of a batch writes: 9 parameters each stays far below the
/// parameter limits of SQLite (32,766) and PostgreSQL (65,535).
pub const ROWS_PER_STATEMENT: usize = 1000;

/// What a batch does to one order: placed in the batch (then the row is written whole), or
/// changed from the row already there.
#[derive(Debug)]
struct Change<'a> {
    tenant: &'a str,
    order_id: &'a str,
    placed: Option<(&'a str, i64, DateTime<Utc>)>,
    status: &'static str,
    confirmed_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancellation_reason: Option<&'a str>,
}

/// One change per order, in the order of each order's first event.
fn fold<'a>(events: &'a [Decoded<'_, OrderEvent>]) -> Vec<Change<'a>> {
    let mut changes: Vec<Change<'a>> = Vec::new();
    let mut index: HashMap<(&'a str, &'a str), usize> = HashMap::new();
    for Decoded { event, envelope } in events {
        let key = (envelope.tenant.as_str(), envelope.stream_id.as_str());
        let at = *index.entry(key).or_insert_with(|| {
            changes.push(Change {
                tenant: key.0,
                order_id: key.1,
                placed: None,
                status: "PENDING",
                confirmed_at: None,
                cancelled_at: None,
                cancellation_reason: None,
            });
            changes.len() - 1
        });
        let change = &mut changes[at];
        match event {
            OrderEvent::OrderCreated(created) => {
                change.placed = Some((
                    created.customer_id.as_str(),
                    created.total_amount,
                    created.created_at,
                ));
                change.status = "PENDING";
                change.confirmed_at = None;
                change.cancelled_at = None;
                change.cancellation_reason = None;
            }
            OrderEvent::InventoryReserved(_) => change.status = "INVENTORY_RESERVED",
            OrderEvent::PaymentProcessed(_) => change.status = "PAYMENT_PROCESSED",
            OrderEvent::OrderConfirmed(confirmed) => {
                change.status = "CONFIRMED";
                change.confirmed_at = Some(confirmed.confirmed_at);
            }
            OrderEvent::OrderCancelled(cancelled) => {
                change.status = "CANCELLED";
                change.cancelled_at = Some(cancelled.cancelled_at);
                change.cancellation_reason = Some(cancelled.reason.as_str());
            }
        }
    }
    changes
}

/// `($1, $2, ...), ($10, ...)`: `rows` groups of `columns` numbered parameters.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", numbers.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl OrderList {
    /// The orders placed in the batch, whole, as the per-event upsert would leave them.
    fn upsert_placed(&self, rows: &[Change<'_>]) -> (String, Vec<SqlValue>) {
        let statement = format!(
            "INSERT INTO {} (tenant, order_id, customer_id, total_amount, status, created_at,
                 confirmed_at, cancelled_at, cancellation_reason)
             VALUES {}
             ON CONFLICT (tenant, order_id) DO UPDATE SET customer_id = excluded.customer_id,
                 total_amount = excluded.total_amount, status = excluded.status,
                 created_at = excluded.created_at, confirmed_at = excluded.confirmed_at,
                 cancelled_at = excluded.cancelled_at,
                 cancellation_reason = excluded.cancellation_reason",
            self.table,
            placeholders(rows.len(), 9)
        );
        let mut params = Vec::with_capacity(rows.len() * 9);
        for row in rows {
            let Some((customer_id, total_amount, created_at)) = row.placed else {
                continue;
            };
            params.extend([
                row.tenant.into(),
                row.order_id.into(),
                customer_id.into(),
                total_amount.into(),
                row.status.into(),
                created_at.into(),
                row.confirmed_at.into(),
                row.cancelled_at.into(),
                row.cancellation_reason.into(),
            ]);
        }
        (statement, params)
    }

    /// The orders the batch changes but did not place, all with the same set of columns
    /// changed (the status always; the confirmation or cancellation time and reason when the
    /// batch set them), so no column of the values is all `NULL` and untyped.
    fn update_changed(&self, rows: &[&Change<'_>]) -> (String, Vec<SqlValue>) {
        let (confirmed, cancelled) = columns_of(rows[0]);
        let mut columns = vec!["tenant", "order_id", "status"];
        let mut set = vec!["status = v.status".to_owned()];
        if confirmed {
            columns.push("confirmed_at");
            set.push("confirmed_at = v.confirmed_at".to_owned());
        }
        if cancelled {
            columns.extend(["cancelled_at", "cancellation_reason"]);
            set.push("cancelled_at = v.cancelled_at".to_owned());
            set.push("cancellation_reason = v.cancellation_reason".to_owned());
        }
        let statement = format!(
            "WITH v ({}) AS (VALUES {})
             UPDATE {} AS t SET {} FROM v WHERE t.tenant = v.tenant AND t.order_id = v.order_id",
            columns.join(", "),
            placeholders(rows.len(), columns.len()),
            self.table,
            set.join(", "),
        );
        let mut params = Vec::with_capacity(rows.len() * columns.len());
        for row in rows {
            params.extend([row.tenant.into(), row.order_id.into(), row.status.into()]);
            if confirmed {
                params.push(row.confirmed_at.into());
            }
            if cancelled {
                params.extend([row.cancelled_at.into(), row.cancellation_reason.into()]);
            }
        }
        (statement, params)
    }
}

/// Which optional columns a change sets: the confirmation time, the cancellation time and
/// reason.
fn columns_of(change: &Change<'_>) -> (bool, bool) {
    (change.confirmed_at.is_some(), change.cancelled_at.is_some())
}

/// The statement that moves an order to `status`.
fn status(table: &str, status: &str) -> (String, Vec<SqlValue>) {
    (
        format!("UPDATE {table} SET status = $3 WHERE tenant = $1 AND order_id = $2"),
        vec![status.into()],
    )
}
