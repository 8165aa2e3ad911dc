//! The order service: places, confirms and cancels orders on SQLite and relays what other
//! services may know about them, the integration events `OrderPlaced`, `OrderConfirmed` and
//! `OrderCancelled` (es-examples' `order_integration`), to NATS JetStream. Its event log is the
//! outbox: the commands only append events, the relay publishes them after.
//!
//! ```sh
//! nats-server -js &                                      # if none runs on 127.0.0.1:4222
//! cargo run -p es-nats --example order_service -- --orders 12
//! cargo run -p es-nats --example order_summary           # the consuming service
//! ```
//!
//! `NATS_URL` overrides the server address.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use es_core::{CommandContext, Repository};
use es_examples::order::{
    Address, CancelOrder, ConfirmOrder, CreateOrder, Order, OrderEvent, OrderItem, ProcessPayment,
    ReserveInventory, total_of,
};
use es_examples::order_integration::{OrderIntegrationEvent, from_order_event};
use es_nats::{EsNats, StreamSettings};
use es_sqlite::SqliteStore;
use tokio::sync::oneshot;

/// The subject prefix of the order service's integration events: `orders.order.<event type>`.
const PREFIX: &str = "orders";
/// The relay's name: its checkpoint and lock in the store.
const RELAY: &str = "order-service";

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let orders = parse_orders()?;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/out");
    std::fs::create_dir_all(&out)?;
    let path = out.join("order_service.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = SqliteStore::open(&path).await?;
    // The stream keeps a day of orders; its duplicate window covers a relay restart.
    let settings = StreamSettings::for_prefix(PREFIX)
        .max_age(Duration::from_secs(24 * 3600))
        .duplicate_window(Duration::from_secs(5 * 60));
    let nats = EsNats::connect_with(&url, PREFIX, settings).await?;
    println!(
        "order service: orders in {}, integration events to stream `{}` at {url}\n",
        path.display(),
        nats.stream_settings().name
    );

    // The relay tails the log while the commands run.
    let relay = || {
        nats.relay(store.clone(), RELAY)
            .map::<OrderEvent, OrderIntegrationEvent>(from_order_event)
            .idle_timeout(Duration::from_millis(200))
    };
    let mut running = relay();
    let (stop, stopped) = oneshot::channel::<()>();
    let relay_task = tokio::spawn(async move {
        running
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });

    let repository = Repository::<Order, _>::new(store.clone());
    let run = Utc::now().format("%H%M%S").to_string();
    let (mut confirmed, mut cancelled) = (0, 0);
    for i in 0..orders {
        let id = format!("order-{run}-{i:03}");
        let context = CommandContext::new()
            .with_source("order-service")
            .with_correlation_id(format!("req-{id}"));
        let items = vec![
            OrderItem::new("book", 1 + (i % 3) as u32, 1_500),
            OrderItem::new("pen", 2, 200),
        ];
        let total = total_of(&items);
        let create = CreateOrder {
            customer_id: format!("customer-{}", i % 4),
            items,
            shipping_address: Address {
                street: "1-2-3 Shibuya".into(),
                city: "Tokyo".into(),
                postal_code: "150-0002".into(),
                country: "JP".into(),
            },
            at: Utc::now(),
        };
        repository.execute(&id, &create, &context).await?;
        let reserve = ReserveInventory {
            reservation_id: format!("res-{id}"),
        };
        repository.execute(&id, &reserve, &context).await?;
        if i % 3 == 2 {
            let cancel = CancelOrder {
                reason: "out of stock".into(),
                at: Utc::now(),
            };
            repository.execute(&id, &cancel, &context).await?;
            cancelled += 1;
            println!("  {id}  placed {total:>6}  cancelled");
        } else {
            let pay = ProcessPayment {
                payment_id: format!("pay-{id}"),
                amount: total,
                at: Utc::now(),
            };
            repository.execute(&id, &pay, &context).await?;
            repository
                .execute(&id, &ConfirmOrder { at: Utc::now() }, &context)
                .await?;
            confirmed += 1;
            println!("  {id}  placed {total:>6}  confirmed");
        }
    }

    // Wait until the relay has published everything, then stop it.
    let watcher = relay();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lag = watcher.lag().await?;
        if lag.behind == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(
                format!("the relay is still {} events behind after 30 s", lag.behind).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let checkpoint = relay_task.await??;
    println!(
        "\n{orders} orders: {confirmed} confirmed, {cancelled} cancelled; {} integration events \
         published (inventory and payment steps stay inside), relay checkpoint {checkpoint}",
        orders + confirmed + cancelled
    );
    println!("next: cargo run -p es-nats --example order_summary");
    Ok(())
}

/// `--orders N` (default 12).
fn parse_orders() -> Result<usize, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut orders = 12;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--orders" => {
                orders = args
                    .next()
                    .ok_or("--orders needs a number")?
                    .parse()
                    .map_err(|_| "--orders needs a number")?;
            }
            other => return Err(format!("unknown argument `{other}`; usage: --orders N").into()),
        }
    }
    Ok(orders)
}
