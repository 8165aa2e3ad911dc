//! Seed 000's order flow, end to end: commands, the events they record (with versions and
//! metadata), time travel, an old v1 event loading through its upcaster, and the exported
//! event schemas.
//!
//! Run it with `cargo run --example orders`.

use std::error::Error;

use chrono::Utc;
use es_core::schema::SchemaSet;
use es_core::{
    CommandContext, EventStore, ExpectedVersion, MemoryStore, NewEvent, RawJson, Repository, Until,
};
use es_examples::order::{
    Address, CancelOrder, ConfirmOrder, CreateOrder, Order, OrderCreatedV1, OrderItem,
    ProcessPayment, ReserveInventory, total_of,
};
use futures_util::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let store = MemoryStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let ctx = || {
        CommandContext::new()
            .with_actor("user-7")
            .with_source("orders-example")
    };
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

    println!("== order-1: the happy path ==");
    let create = CreateOrder {
        customer_id: "alice".into(),
        items: items.clone(),
        shipping_address: address.clone(),
        at: Utc::now(),
    };
    report(
        "CreateOrder",
        orders.execute("order-1", &create, &ctx()).await,
    );
    let reserve = ReserveInventory {
        reservation_id: "res-1".into(),
    };
    report(
        "ReserveInventory",
        orders.execute("order-1", &reserve, &ctx()).await,
    );
    let pay = ProcessPayment {
        payment_id: "pay-1".into(),
        amount: total,
        at: Utc::now(),
    };
    report(
        "ProcessPayment",
        orders.execute("order-1", &pay, &ctx()).await,
    );
    report(
        "ConfirmOrder",
        orders
            .execute("order-1", &ConfirmOrder { at: Utc::now() }, &ctx())
            .await,
    );

    println!("\n== order-2: a payment that does not match, then a cancellation ==");
    let create_bob = CreateOrder {
        customer_id: "bob".into(),
        ..create.clone()
    };
    report(
        "CreateOrder",
        orders.execute("order-2", &create_bob, &ctx()).await,
    );
    report(
        "ReserveInventory",
        orders.execute("order-2", &reserve, &ctx()).await,
    );
    let short = ProcessPayment {
        amount: total - 100,
        ..pay.clone()
    };
    report(
        "ProcessPayment (short)",
        orders.execute("order-2", &short, &ctx()).await,
    );
    let cancel = CancelOrder {
        reason: "customer changed their mind".into(),
        at: Utc::now(),
    };
    report(
        "CancelOrder",
        orders.execute("order-2", &cancel, &ctx()).await,
    );
    report(
        "ConfirmOrder",
        orders
            .execute("order-2", &ConfirmOrder { at: Utc::now() }, &ctx())
            .await,
    );

    println!("\n== the event log of order-1 ==");
    let mut events = store.read_stream("order-1", 1, Until::End);
    while let Some(event) = events.try_next().await? {
        let metadata = event.metadata()?;
        println!(
            "  v{} {} (schema v{}) at {}  actor={} correlation={}",
            event.stream_version,
            event.event_type,
            event.schema_version,
            event.recorded_at.format("%H:%M:%S%.3f"),
            metadata.actor_id.unwrap_or_default(),
            metadata
                .correlation_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        );
        println!("      payload {}", event.payload);
    }

    println!("\n== time travel ==");
    let now = orders.load("order-1").await?;
    let then = orders.load_at_version("order-1", 2).await?;
    println!(
        "  order-1 now:          {:?} at version {}",
        now.state.status, now.version
    );
    println!("  order-1 at version 2: {:?}", then.state.status);

    println!("\n== an OrderCreated stored at schema version 1 (no total) ==");
    let v1 = OrderCreatedV1 {
        customer_id: "carol".into(),
        items: items.clone(),
        shipping_address: address,
        created_at: Utc::now(),
    };
    let old = NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "OrderCreated".into(),
        schema_version: 1,
        payload: RawJson::encode(&v1)?,
        metadata: RawJson::empty_object(),
    };
    println!("  stored payload: {}", old.payload);
    store
        .append("order", "order-3", ExpectedVersion::NoStream, vec![old])
        .await?;
    let upcast = orders.load("order-3").await?;
    println!(
        "  loads as version 2 with total_amount {} (computed by the v1 -> v2 upcaster)",
        upcast.state.total_amount
    );

    let dir = std::env::temp_dir().join("es-orders-schemas");
    let written = SchemaSet::new().aggregate::<Order>().export(&dir)?;
    println!(
        "\n== event schemas ==\n  {} files written to {}",
        written.len(),
        dir.display()
    );
    for file in &written {
        println!("  {}", file.strip_prefix(&dir).unwrap_or(file).display());
    }

    println!(
        "\nNext: `cargo test` runs the rules as given/when/then tests (tests/tests/order_rules.rs);"
    );
    println!("add an event to OrderEvent and see the compiler ask for its apply logic.");
    Ok(())
}

fn report<E: std::fmt::Display>(command: &str, result: Result<es_core::Executed<Order>, E>) {
    match result {
        Ok(done) => {
            let names: Vec<&str> = done.events.iter().map(es_core::Event::event_type).collect();
            println!(
                "  {command:<24} -> {} (now v{}, status {:?})",
                names.join(", "),
                done.version,
                done.state.status
            );
        }
        Err(error) => println!("  {command:<24} -> rejected: {error}"),
    }
}
