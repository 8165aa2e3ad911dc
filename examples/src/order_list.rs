//! Seed 000's `OrderListProjection`: the `order_list_view` table, one row per order, kept by a
//! transactional projection. Its writes go through the runner's transaction, so each batch's
//! rows and the checkpoint commit together (exactly once), on PostgreSQL and on SQLite alike.

use chrono::{DateTime, Utc};
use es_core::RecordedEvent;
use es_core::projection::{HandlerError, Projection};
use es_postgres::PgStore;
use es_sqlite::SqliteStore;

use crate::order::OrderEvent;

/// One row of `order_list_view`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
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
    /// The read model in table `order_list_view` (SQLite, or PostgreSQL's default schema).
    pub fn new() -> Self {
        Self {
            table: "order_list_view".to_owned(),
        }
    }

    /// The read model in PostgreSQL schema `schema`, beside the store's own tables
    /// (`PgStore::schema`).
    pub fn in_schema(schema: &str) -> Self {
        Self {
            table: format!("\"{}\".order_list_view", schema.replace('"', "\"\"")),
        }
    }

    /// The qualified table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table on PostgreSQL if it does not exist.
    pub async fn create_table_postgres(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(&self.create_table("TIMESTAMPTZ"))
            .execute(pool)
            .await
            .map(drop)
    }

    /// Creates the table on SQLite if it does not exist.
    pub async fn create_table_sqlite(&self, pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
        sqlx::query(&self.create_table("TEXT"))
            .execute(pool)
            .await
            .map(drop)
    }

    fn create_table(&self, time: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                total_amount BIGINT NOT NULL,
                status TEXT NOT NULL,
                created_at {time} NOT NULL,
                confirmed_at {time},
                cancelled_at {time},
                cancellation_reason TEXT
            )",
            self.table
        )
    }

    /// Every row, by creation time then id.
    pub async fn rows_postgres(&self, pool: &sqlx::PgPool) -> Result<Vec<OrderRow>, sqlx::Error> {
        sqlx::query_as(&self.select_all()).fetch_all(pool).await
    }

    /// Every row, by creation time then id.
    pub async fn rows_sqlite(&self, pool: &sqlx::SqlitePool) -> Result<Vec<OrderRow>, sqlx::Error> {
        sqlx::query_as(&self.select_all()).fetch_all(pool).await
    }

    fn select_all(&self) -> String {
        format!("SELECT * FROM {} ORDER BY created_at, order_id", self.table)
    }
}

/// What one event does to its order's row.
enum Change<'a> {
    Insert {
        customer_id: &'a str,
        total_amount: i64,
        created_at: DateTime<Utc>,
    },
    Status(&'static str),
    Confirmed(DateTime<Utc>),
    Cancelled(DateTime<Utc>, &'a str),
}

impl<'a> Change<'a> {
    fn of(event: &'a OrderEvent) -> Self {
        match event {
            OrderEvent::OrderCreated(e) => Change::Insert {
                customer_id: &e.customer_id,
                total_amount: e.total_amount,
                created_at: e.created_at,
            },
            OrderEvent::InventoryReserved(_) => Change::Status("INVENTORY_RESERVED"),
            OrderEvent::PaymentProcessed(_) => Change::Status("PAYMENT_PROCESSED"),
            OrderEvent::OrderConfirmed(e) => Change::Confirmed(e.confirmed_at),
            OrderEvent::OrderCancelled(e) => Change::Cancelled(e.cancelled_at, &e.reason),
        }
    }

    fn sql(&self, table: &str) -> String {
        match self {
            // Upsert, so that a read model fed at least once (outside a shared transaction)
            // converges too.
            Change::Insert { .. } => format!(
                "INSERT INTO {table} (order_id, customer_id, total_amount, status, created_at)
                 VALUES ($1, $2, $3, 'PENDING', $4)
                 ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id,
                     total_amount = excluded.total_amount, status = 'PENDING',
                     created_at = excluded.created_at, confirmed_at = NULL, cancelled_at = NULL,
                     cancellation_reason = NULL"
            ),
            Change::Status(_) => format!("UPDATE {table} SET status = $2 WHERE order_id = $1"),
            Change::Confirmed(_) => {
                format!("UPDATE {table} SET status = 'CONFIRMED', confirmed_at = $2 WHERE order_id = $1")
            }
            Change::Cancelled(..) => format!(
                "UPDATE {table} SET status = 'CANCELLED', cancelled_at = $2, cancellation_reason = $3
                 WHERE order_id = $1"
            ),
        }
    }
}

/// The order list on one store; the body is the same for every SQL store.
macro_rules! order_list_projection {
    ($store:ty) => {
        impl Projection<$store> for OrderList {
            type Event = OrderEvent;

            fn name(&self) -> &str {
                "order_list"
            }

            async fn handle(
                &mut self,
                transaction: &mut <$store as es_core::projection::ProjectionStore>::Transaction,
                event: &OrderEvent,
                envelope: &RecordedEvent,
            ) -> Result<(), HandlerError> {
                let change = Change::of(event);
                let sql = change.sql(&self.table);
                let query = sqlx::query(&sql).bind(&envelope.stream_id);
                let query = match change {
                    Change::Insert {
                        customer_id,
                        total_amount,
                        created_at,
                    } => query.bind(customer_id).bind(total_amount).bind(created_at),
                    Change::Status(status) => query.bind(status),
                    Change::Confirmed(at) => query.bind(at),
                    Change::Cancelled(at, reason) => query.bind(at).bind(reason),
                };
                let updated = query.execute(&mut **transaction).await?.rows_affected();
                if updated == 0 {
                    // The global log delivers an order's creation first: a missing row means
                    // the table was tampered with, so fail (retry, then park) rather than skip.
                    return Err(format!(
                        "{} has no row for order `{}` (event {} at version {})",
                        self.table,
                        envelope.stream_id,
                        envelope.event_type,
                        envelope.stream_version
                    )
                    .into());
                }
                Ok(())
            }

            async fn reset(
                &mut self,
                transaction: &mut <$store as es_core::projection::ProjectionStore>::Transaction,
            ) -> Result<(), HandlerError> {
                sqlx::query(&format!("DELETE FROM {}", self.table))
                    .execute(&mut **transaction)
                    .await?;
                Ok(())
            }
        }
    };
}

order_list_projection!(PgStore);
order_list_projection!(SqliteStore);
