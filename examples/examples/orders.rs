//! The order flow, end to end, on a SQLite file with no set-up: commands and the events they
//! record (with versions and metadata), a rejected payment, a cancellation, time travel, an old
//! version 1 event loading through its upcaster, the order list read model, and the exported
//! event schemas.
//!
//! ```sh
//! cargo run --example orders                 # SQLite file examples/out/orders.db
//! cargo run --example orders -- --postgres   # PostgreSQL at $DATABASE_URL (default 127.0.0.1)
//! ```

use std::error::Error;
use std::path::PathBuf;

use chrono::Utc;
use es_core::projection::ProjectionRunner;
use es_core::schema::SchemaSet;
use es_core::sql::SqlStore;
use es_core::{
    CommandContext, DEFAULT_TENANT, ExecuteError, ExpectedVersion, LogScope, NewEvent, Position,
    RawJson, Repository, StreamKey,
};
use es_examples::order::{
    Address, CancelOrder, ConfirmOrder, CreateOrder, Order, OrderCreatedV1, OrderItem,
    ProcessPayment, ReserveInventory, total_of,
};
use es_examples::order_list::{OrderList, OrderRow};
use es_postgres::{PgOptions, PgStore};
use es_sqlite::SqliteStore;

/// The PostgreSQL schema the example owns (dropped and recreated on every run).
const PG_SCHEMA: &str = "es_orders_example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("out");
    std::fs::create_dir_all(&out)?;
    let rows = match std::env::args().nth(1).as_deref() {
        Some("--postgres") => {
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            println!("es: the order service's flow on PostgreSQL, schema `{PG_SCHEMA}`\n");
            // Opened without migrating first: the example starts from an empty schema.
            let options = PgOptions::new().schema(PG_SCHEMA)?.migrate(false);
            let store = PgStore::connect_with(&url, options)
                .await
                .map_err(|e| format!("{e}\n(start a server or set DATABASE_URL)"))?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
                .execute(store.pool())
                .await?;
            store.migrate().await?;
            let list = OrderList::in_schema(PG_SCHEMA);
            let store = run(store, list.clone()).await?;
            list.rows(&store, DEFAULT_TENANT, 100).await?
        }
        Some(other) => {
            return Err(
                format!("unknown argument `{other}`; the only option is `--postgres`").into(),
            );
        }
        None => {
            let path = out.join("orders.db");
            for file in ["orders.db", "orders.db-wal", "orders.db-shm"] {
                let _ = std::fs::remove_file(out.join(file));
            }
            println!(
                "es: the order service's flow on SQLite, {}\n",
                path.display()
            );
            let store = SqliteStore::open(&path).await?;
            let list = OrderList::new();
            let store = run(store, list.clone()).await?;
            list.rows(&store, DEFAULT_TENANT, 100).await?
        }
    };
    print_order_list(&rows);

    let dir = out.join("schemas");
    let written = SchemaSet::new().aggregate::<Order>().export(&dir)?;
    println!(
        "\n== event schemas ==\n  {} JSON Schemas and index.json in {}",
        written.len(),
        dir.display()
    );

    println!("\nNext:");
    println!("  cargo test --test order_rules     the order rules as given/when/then tests");
    println!(
        "  cargo run --example catalog       a product catalog, with a v1 -> v2 event upgrade"
    );
    println!("  cargo run --example web           the order service over HTTP");
    println!("  add a variant to OrderEvent       and see the compiler ask for its apply logic");
    Ok(())
}

/// The whole flow on any SQL store; returns the store for the caller's read-model query.
async fn run<S: SqlStore>(store: S, list: OrderList) -> Result<S, Box<dyn Error + Send + Sync>> {
    list.create_table(&store).await?;
    let orders = Repository::<Order, _>::new(store.clone());
    // One correlation id per order's conversation; each command is the causation of its events.
    let ctx = |correlation: &str| {
        CommandContext::new()
            .with_actor("user-7")
            .with_source("orders-example")
            .with_correlation_id(correlation)
    };
    let (alice, bob, carol) = ("req-alice", "req-bob", "req-carol");
    let address = Address {
        street: "1-2-3 Shibuya".into(),
        city: "Tokyo".into(),
        postal_code: "150-0002".into(),
        country: "JP".into(),
    };
    let items = vec![
        OrderItem::new("book", 2, 1_500),
        OrderItem::new("pen", 3, 200),
    ];
    let total = total_of(&items);
    let create = |customer: &str| CreateOrder {
        customer_id: customer.into(),
        items: items.clone(),
        shipping_address: address.clone(),
        at: Utc::now(),
    };
    let reserve = ReserveInventory {
        reservation_id: "res-1".into(),
    };
    let pay = |amount| ProcessPayment {
        payment_id: "pay-1".into(),
        amount,
        at: Utc::now(),
    };
    let confirm = ConfirmOrder { at: Utc::now() };

    println!("== order-1 (alice): the happy path ==");
    report(
        "CreateOrder",
        orders
            .execute("order-1", &create("alice"), &ctx(alice))
            .await,
    );
    report(
        "ReserveInventory",
        orders.execute("order-1", &reserve, &ctx(alice)).await,
    );
    report(
        "ProcessPayment",
        orders.execute("order-1", &pay(total), &ctx(alice)).await,
    );
    report(
        "ConfirmOrder",
        orders.execute("order-1", &confirm, &ctx(alice)).await,
    );

    println!("\n== order-2 (bob): a payment that does not match, then a cancellation ==");
    report(
        "CreateOrder",
        orders.execute("order-2", &create("bob"), &ctx(bob)).await,
    );
    report(
        "ReserveInventory",
        orders.execute("order-2", &reserve, &ctx(bob)).await,
    );
    report(
        "ProcessPayment (short)",
        orders
            .execute("order-2", &pay(total - 100), &ctx(bob))
            .await,
    );
    let cancel = CancelOrder {
        reason: "customer changed their mind".into(),
        at: Utc::now(),
    };
    report(
        "CancelOrder",
        orders.execute("order-2", &cancel, &ctx(bob)).await,
    );
    report(
        "ConfirmOrder",
        orders.execute("order-2", &confirm, &ctx(bob)).await,
    );

    println!("\n== order-3 (carol): still pending ==");
    report(
        "CreateOrder",
        orders
            .execute("order-3", &create("carol"), &ctx(carol))
            .await,
    );

    println!("\n== the global event log, with metadata ==");
    for event in store
        .read_all(LogScope::AllTenants, Position::START, 100)
        .await?
    {
        let metadata = event.metadata()?;
        let short = |id: Option<String>| {
            id.map(|id| id.chars().take(9).collect::<String>())
                .unwrap_or_default()
        };
        println!(
            "  {} v{} {:<18} schema v{}  actor={} correlation={} causation={}",
            event.stream_id,
            event.stream_version,
            event.event_type,
            event.schema_version,
            metadata.actor_id.unwrap_or_default(),
            short(metadata.correlation_id),
            short(metadata.causation_id),
        );
    }

    println!("\n== time travel ==");
    let now = orders.load("order-1").await?;
    let then = orders.load_at_version("order-1", 2).await?;
    println!(
        "  order-1 now:          {:?} at version {}",
        now.state.status, now.version
    );
    println!("  order-1 at version 2: {:?}", then.state.status);

    println!("\n== an OrderCreated stored at schema version 1, before orders recorded a total ==");
    let v1 = OrderCreatedV1 {
        customer_id: "dave".into(),
        items: items.clone(),
        shipping_address: address,
        created_at: Utc::now(),
    };
    let old = NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "OrderCreated".into(),
        schema_version: 1,
        payload: RawJson::encode(&v1)?,
        metadata: RawJson::encode(&ctx("req-dave").metadata())?,
    };
    store
        .append(
            StreamKey::new("order", "order-4"),
            ExpectedVersion::NoStream,
            vec![old],
        )
        .await?;
    let upcast = orders.load("order-4").await?;
    println!(
        "  order-4 loads with total_amount {} (computed by the v1 -> v2 upcaster)",
        upcast.state.total_amount
    );

    let mut runner = ProjectionRunner::new(store.clone(), list);
    let checkpoint = runner.catch_up().await?;
    println!(
        "\n== the order list read model (projection `order_list`, caught up to event {}) ==",
        checkpoint.sequence
    );
    Ok(store)
}

fn report<E: std::fmt::Display>(
    command: &str,
    result: Result<es_core::Executed<Order>, ExecuteError<E>>,
) {
    match result {
        Ok(done) => {
            let names: Vec<&str> = done.events.iter().map(es_core::Event::event_type).collect();
            println!(
                "  {command:<24} -> {} (now v{}, {:?})",
                names.join(", "),
                done.version,
                done.state.status
            );
        }
        Err(ExecuteError::Rejected(error)) => println!("  {command:<24} -> rejected: {error}"),
        Err(error) => println!("  {command:<24} -> failed: {error}"),
    }
}

fn print_order_list(rows: &[OrderRow]) {
    println!(
        "  {:<8} {:<9} {:>6}  {:<18} {:<9} {:<9} reason",
        "order", "customer", "total", "status", "created", "closed"
    );
    for row in rows {
        let time = |t: Option<chrono::DateTime<Utc>>| {
            t.map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_default()
        };
        println!(
            "  {:<8} {:<9} {:>6}  {:<18} {:<9} {:<9} {}",
            row.order_id,
            row.customer_id,
            row.total_amount,
            row.status,
            time(Some(row.created_at)),
            time(row.confirmed_at.or(row.cancelled_at)),
            row.cancellation_reason.as_deref().unwrap_or(""),
        );
    }
}
