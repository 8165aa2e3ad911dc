//! The product catalog on a SQLite file: products are created and re-priced (a price of
//! zero is rejected), and products stored before `ProductCreated` gained its SKU (schema
//! version 1) load as version 2 with the SKU the upgrade derives.
//!
//! ```sh
//! cargo run --example catalog
//! ```

use std::error::Error;
use std::path::PathBuf;

use chrono::Utc;
use es_core::{
    CommandContext, EventStore, ExecuteError, ExpectedVersion, NewEvent, RawJson, Repository,
    StreamKey, Until,
};
use es_examples::catalog::{CreateProduct, Product, ProductCreatedV1, UpdatePrice};
use es_sqlite::SqliteStore;
use futures_util::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("out");
    std::fs::create_dir_all(&out)?;
    for file in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(out.join(file));
    }
    let path = out.join("catalog.db");
    println!("es: the product catalog on SQLite, {}\n", path.display());
    let store = SqliteStore::open(&path).await?;
    let products = Repository::<Product, _>::new(store.clone());
    let ctx = || {
        CommandContext::new()
            .with_actor("merchandiser-3")
            .with_source("catalog-example")
    };

    println!("== products written before the SKU existed (ProductCreated at schema version 1) ==");
    for (id, name, category, price) in [
        ("p-1", "Sencha", "tea", 1_200),
        ("p-2", "Hojicha 200g", "tea", 900),
    ] {
        let v1 = ProductCreatedV1 {
            product_id: id.into(),
            name: name.into(),
            price,
            category_id: category.into(),
            created_at: Utc::now(),
        };
        let payload = RawJson::encode(&v1)?;
        println!("  stored {id} v1 payload {payload}");
        let old = NewEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: "ProductCreated".into(),
            schema_version: 1,
            payload,
            metadata: RawJson::encode(&ctx().metadata())?,
        };
        store
            .append(
                StreamKey::new("product", id),
                ExpectedVersion::NoStream,
                vec![old],
            )
            .await?;
    }

    println!("\n== a product created today (schema version 2) ==");
    let create = CreateProduct {
        product_id: "p-3".into(),
        name: "Matcha Whisk".into(),
        price: 2_800,
        category_id: "tea ware".into(),
        at: Utc::now(),
    };
    report(
        "CreateProduct p-3",
        products.execute("p-3", &create, &ctx()).await,
    );

    println!("\n== price updates: positive prices only ==");
    let price = |new_price| UpdatePrice {
        new_price,
        at: Utc::now(),
    };
    report(
        "UpdatePrice p-1 1350",
        products.execute("p-1", &price(1_350), &ctx()).await,
    );
    report(
        "UpdatePrice p-2 0",
        products.execute("p-2", &price(0), &ctx()).await,
    );
    report(
        "UpdatePrice p-9 500",
        products.execute("p-9", &price(500), &ctx()).await,
    );

    println!("\n== every product, loaded through the upcaster ==");
    for id in ["p-1", "p-2", "p-3"] {
        let product = products.load(id).await?.state;
        println!(
            "  {id}  {:<13} {:<9} {:>5}  sku {}",
            product.name, product.category_id, product.price, product.sku
        );
    }

    println!("\n== the stream of p-1 as stored: old payloads are never rewritten ==");
    let mut stream = store.read_stream(StreamKey::new("product", "p-1"), 1, Until::End);
    while let Some(event) = stream.try_next().await? {
        println!(
            "  v{} {} (schema v{}) {}",
            event.stream_version, event.event_type, event.schema_version, event.payload
        );
    }

    println!(
        "\nNext: cargo test --test catalog_rules   the product rules and the v1 -> v2 upgrade as tests"
    );
    Ok(())
}

fn report<E: std::fmt::Display>(
    command: &str,
    result: Result<es_core::Executed<Product>, ExecuteError<E>>,
) {
    match result {
        Ok(done) => {
            let names: Vec<&str> = done.events.iter().map(es_core::Event::event_type).collect();
            println!(
                "  {command:<22} -> {} (now v{}, price {})",
                names.join(", "),
                done.version,
                done.state.price
            );
        }
        Err(ExecuteError::Rejected(error)) => println!("  {command:<22} -> rejected: {error}"),
        Err(error) => println!("  {command:<22} -> failed: {error}"),
    }
}
