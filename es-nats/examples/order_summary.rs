//! A second service: consumes the order service's integration events from NATS JetStream into a
//! read model of its own (a SQLite file), through the inbox so that each event counts once
//! however often it is delivered, then prints its summary and exits once nothing is pending.
//!
//! ```sh
//! cargo run -p es-nats --example order_service -- --orders 12   # publishes the events
//! cargo run -p es-nats --example order_summary                   # this consumer
//! ```
//!
//! The durable consumer `order-summary` remembers what it acknowledged: a second run handles
//! only what was published since. Without its read model file (the first run, or after deleting
//! `es-nats/examples/out/order_summary.db`) it starts again from the beginning of the stream.
//! `NATS_URL` overrides the server address.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use es_core::RecordedEvent;
use es_core::integration::{DeadLetterQueue, Outcome};
use es_core::projection::{HandlerError, Projection};
use es_core::sql::{SqlStore, SqlValue, rows_as};
use es_examples::order_integration::OrderIntegrationEvent;
use es_nats::{EsNats, StreamSettings};
use es_sqlite::SqliteStore;

const PREFIX: &str = "orders";
const CONSUMER: &str = "order-summary";

type BoxError = Box<dyn Error + Send + Sync>;

/// The read model: one row per order.
#[derive(Debug, Clone)]
struct OrderSummary;

impl OrderSummary {
    async fn create_table<S: SqlStore>(store: &S) -> Result<(), es_core::StoreError> {
        store
            .run(
                "CREATE TABLE IF NOT EXISTS order_summary (
                    order_id TEXT PRIMARY KEY,
                    customer_id TEXT NOT NULL,
                    total_amount BIGINT NOT NULL,
                    item_count BIGINT NOT NULL,
                    status TEXT NOT NULL,
                    reason TEXT
                )",
                &[],
            )
            .await
            .map(drop)
    }
}

impl<S: SqlStore> Projection<S> for OrderSummary {
    type Event = OrderIntegrationEvent;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(
        &mut self,
        transaction: &mut S::Transaction,
        event: &OrderIntegrationEvent,
        _envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let (statement, params): (&str, Vec<SqlValue>) = match event {
            OrderIntegrationEvent::OrderPlaced(placed) => (
                "INSERT INTO order_summary (order_id, customer_id, total_amount, item_count, status)
                 VALUES ($1, $2, $3, $4, 'PLACED')",
                vec![
                    placed.order_id.as_str().into(),
                    placed.customer_id.as_str().into(),
                    placed.total_amount.into(),
                    i64::from(placed.item_count).into(),
                ],
            ),
            OrderIntegrationEvent::OrderConfirmed(confirmed) => (
                "UPDATE order_summary SET status = 'CONFIRMED' WHERE order_id = $1",
                vec![confirmed.order_id.as_str().into()],
            ),
            OrderIntegrationEvent::OrderCancelled(cancelled) => (
                "UPDATE order_summary SET status = 'CANCELLED', reason = $2 WHERE order_id = $1",
                vec![
                    cancelled.order_id.as_str().into(),
                    cancelled.reason.as_str().into(),
                ],
            ),
        };
        let changed = S::execute(transaction, statement, &params).await?;
        if changed == 0 {
            // The order service publishes an order's events in order: this cannot happen
            // unless a message was lost. Retried, then dead-lettered.
            return Err("no such order in the summary".into());
        }
        Ok(())
    }

    async fn reset(&mut self, transaction: &mut S::Transaction) -> Result<(), HandlerError> {
        S::execute(transaction, "DELETE FROM order_summary", &[]).await?;
        Ok(())
    }
}

#[derive(Debug, serde::Deserialize)]
struct StatusRow {
    status: String,
    orders: i64,
    amount: i64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/out");
    std::fs::create_dir_all(&out)?;
    let path = out.join("order_summary.db");
    let fresh = !path.exists();
    let settings = StreamSettings::for_prefix(PREFIX)
        .max_age(Duration::from_secs(24 * 3600))
        .duplicate_window(Duration::from_secs(5 * 60));
    let nats = EsNats::connect_with(&url, PREFIX, settings).await?;
    if fresh {
        // A new read model starts from the beginning of the stream.
        let stream = nats
            .jetstream()
            .get_stream(&nats.stream_settings().name)
            .await?;
        let _ = stream.delete_consumer(CONSUMER).await;
    }
    let store = SqliteStore::open(&path).await?;
    OrderSummary::create_table(&store).await?;
    println!(
        "order summary: consuming `{PREFIX}.>` from {url} as `{CONSUMER}` into {}{}\n",
        path.display(),
        if fresh { " (new: from the start)" } else { "" }
    );

    // A durable consumer named after the projection, the inbox in `store`, dead letters in
    // the stream DLQ_ORDERS.
    let mut consumer = nats.consumer(store.clone(), OrderSummary).await?;
    let (mut handled, mut duplicates, mut dead) = (0, 0, 0);
    loop {
        match consumer.process_next(Duration::from_secs(1)).await? {
            Some(Outcome::Handled) => handled += 1,
            Some(Outcome::Duplicate) => duplicates += 1,
            Some(Outcome::DeadLettered { reason }) => {
                dead += 1;
                println!("  dead-lettered: {reason}");
            }
            Some(_) => {}
            // Idle: done once nothing waits for this consumer.
            None if consumer.pending().await? == 0 => break,
            None => {}
        }
    }
    println!(
        "  handled {handled} events ({duplicates} duplicates dropped by the inbox, {dead} dead-lettered)\n"
    );

    let rows: Vec<StatusRow> = rows_as(
        store
            .query(
                "SELECT status, COUNT(*) AS orders, COALESCE(SUM(total_amount), 0) AS amount
                 FROM order_summary GROUP BY status ORDER BY status",
                &[],
            )
            .await?,
    )?;
    println!("  {:<10} {:>6} {:>10}", "status", "orders", "amount");
    for row in &rows {
        println!("  {:<10} {:>6} {:>10}", row.status, row.orders, row.amount);
    }
    let total: i64 = rows.iter().map(|row| row.orders).sum();
    println!("  {:<10} {:>6}", "all", total);
    let waiting = consumer.dead_letter_queue().list(CONSUMER).await?.len();
    if waiting > 0 {
        println!("\n  {waiting} dead letters wait for a redrive");
    }
    Ok(())
}
