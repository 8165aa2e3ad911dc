//! How fast does the order list read model catch up on PostgreSQL?
//!
//! Fills a fresh schema with 100,000 order events (25,000 orders, each created, reserved, paid,
//! then confirmed or cancelled, written straight through `EventStore::append` with the real
//! payload types), then replays the whole log into `order_list_view` with the `OrderList`
//! projection from zero, once per batch size, and reports events per second. Then it times the
//! parts of a catch-up on their own (reading the log, decoding, the handler's statements, one
//! round trip) to show where the time goes.
//!
//! ```sh
//! cargo run --release --example order_list_catch_up
//! cargo run --release --example order_list_catch_up -- --batch-size 100,500,2000 --orders 25000
//! # keep the log of the previous run (filling it takes a while), log every batch's timing:
//! RUST_LOG=es_core=debug cargo run --release --example order_list_catch_up -- --reuse
//! ```
//!
//! It uses PostgreSQL at `$DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and owns the schema `es_order_list_catch_up`, dropped and recreated on every run.

use std::error::Error;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use es_core::projection::{Projection, ProjectionRunner, ProjectionStore, progress_bar};
use es_core::{
    Aggregate, DEFAULT_TENANT, EventStore, ExpectedVersion, LogScope, Metadata, NewEvent, Position,
    RecordedEvent, StreamKey,
};
use es_examples::order::{
    Address, InventoryReserved, Order, OrderCancelled, OrderConfirmed, OrderCreated, OrderEvent,
    OrderItem, PaymentProcessed, total_of,
};
use es_examples::order_list::OrderList;
use es_postgres::{PgOptions, PgStore};
use futures_util::StreamExt;
use sqlx::postgres::PgPoolOptions;

/// The PostgreSQL schema the program owns.
const SCHEMA: &str = "es_order_list_catch_up";

/// Appends in flight while filling the log.
const WRITERS: usize = 8;

struct Options {
    orders: usize,
    batch_sizes: Vec<usize>,
    reuse: bool,
}

fn options() -> Result<Options, Box<dyn Error + Send + Sync>> {
    let mut options = Options {
        orders: 25_000,
        batch_sizes: vec![500],
        reuse: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--orders" => options.orders = value()?.parse()?,
            "--reuse" => options.reuse = true,
            "--batch-size" => {
                options.batch_sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; options: --orders N, --batch-size N[,N...], --reuse"
                )
                .into());
            }
        }
    }
    if options.orders == 0 || options.batch_sizes.contains(&0) {
        return Err("--orders and --batch-size must be positive".into());
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let options = options()?;
    if std::env::var_os("RUST_LOG").is_some() {
        // Each span's time as it closes: `es.projection.batch`, `es.pg.read_all`, ...
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .init();
    }
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 2)
        .connect(&url)
        .await
        .map_err(|e| format!("{e}\n(start a server or set DATABASE_URL)"))?;
    let events = options.orders * 4;
    println!(
        "es: catch-up of the order list on PostgreSQL, schema `{SCHEMA}`, {events} events of {} orders\n",
        options.orders
    );
    let store = PgStore::with_options(pool, PgOptions::new().schema(SCHEMA)?);
    store.migrate().await?;
    let reuse = options.reuse
        && store
            .count_after(LogScope::AllTenants, Position::START)
            .await?
            == events as u64;
    if !reuse {
        sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
            .execute(store.pool())
            .await?;
        store.migrate().await?;
    }
    let list = OrderList::in_schema(SCHEMA);
    list.create_table(&store).await?;
    if reuse {
        println!("reusing the log of the previous run");
    } else {
        let started = Instant::now();
        fill(&store, options.orders).await?;
        let elapsed = started.elapsed();
        println!(
            "filled the log:  {events} events in {:.1} s ({:.0} events/s, {WRITERS} appends in flight, one append of 4 events per order)",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64()
        );
    }
    let end = last_position(&store).await?;

    println!("\n== catch-up of `order_list` from zero ==");
    let mut best = None;
    for &batch_size in &options.batch_sizes {
        let mut runner = ProjectionRunner::new(store.clone(), list.clone()).batch_size(batch_size);
        let started = Instant::now();
        // A rebuild: clear the table and the checkpoint, then catch up from the first event.
        let checkpoint = runner.rebuild(progress_bar("order_list")).await?;
        let elapsed = started.elapsed();
        let rows = list.rows(&store, DEFAULT_TENANT, i64::MAX).await?.len();
        if checkpoint != end || rows != options.orders {
            return Err(format!(
                "the catch-up stopped early (checkpoint {checkpoint}, end of log {end}, {rows} rows): \
                 a long-running write transaction elsewhere on the server holds the log back"
            )
            .into());
        }
        let rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "  batch size {batch_size:>5}: {events} events in {:>6.2} s = {rate:>7.0} events/s ({rows} rows)",
            elapsed.as_secs_f64()
        );
        if best.is_none_or(|(_, best_rate)| rate > best_rate) {
            best = Some((batch_size, rate));
        }
    }

    let batch_size = best.map_or(500, |(batch_size, _)| batch_size);
    println!("\n== where the time goes (batch size {batch_size}) ==");
    breakdown(&store, batch_size, events).await?;

    println!(
        "\nThe schema `{SCHEMA}` is left in place for inspection; the next run drops it (or reuses its log: --reuse)."
    );
    Ok(())
}

/// Order `n`'s life: created, reserved, paid, then confirmed (every fifth one cancelled).
fn lifecycle(n: usize) -> Vec<OrderEvent> {
    let items = vec![
        OrderItem::new("book", 1 + (n % 3) as u32, 1_500),
        OrderItem::new("pen", 2, 200 + (n % 7) as i64),
    ];
    let total = total_of(&items);
    let at = Utc
        .timestamp_opt(1_700_000_000 + n as i64, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let last = if n % 5 == 4 {
        OrderEvent::OrderCancelled(OrderCancelled {
            reason: "customer changed their mind".into(),
            cancelled_at: at + chrono::Duration::minutes(5),
        })
    } else {
        OrderEvent::OrderConfirmed(OrderConfirmed {
            confirmed_at: at + chrono::Duration::minutes(5),
        })
    };
    vec![
        OrderEvent::OrderCreated(OrderCreated {
            customer_id: format!("customer-{}", n % 1_000),
            items: items.clone(),
            shipping_address: Address {
                street: "1-2-3 Shibuya".into(),
                city: "Tokyo".into(),
                postal_code: "150-0002".into(),
                country: "JP".into(),
            },
            total_amount: total,
            created_at: at,
        }),
        OrderEvent::InventoryReserved(InventoryReserved {
            reservation_id: format!("res-{n}"),
            items,
        }),
        OrderEvent::PaymentProcessed(PaymentProcessed {
            payment_id: format!("pay-{n}"),
            amount: total,
            processed_at: at + chrono::Duration::minutes(1),
        }),
        last,
    ]
}

/// Appends every order's life, one append per order, [`WRITERS`] at a time.
async fn fill(store: &PgStore, orders: usize) -> Result<(), Box<dyn Error + Send + Sync>> {
    let metadata = Metadata {
        source: Some("order_list_catch_up".into()),
        ..Metadata::default()
    };
    let mut appends = futures_util::stream::iter(0..orders)
        .map(|n| {
            let metadata = &metadata;
            async move {
                let events = lifecycle(n)
                    .iter()
                    .map(|event| NewEvent::encode(event, metadata))
                    .collect::<Result<Vec<_>, _>>()?;
                store
                    .append(
                        StreamKey::new(Order::NAME, &format!("order-{n}")),
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .await?;
                Ok::<_, Box<dyn Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(WRITERS);
    while let Some(appended) = appends.next().await {
        appended?;
    }
    Ok(())
}

async fn last_position(store: &PgStore) -> Result<Position, Box<dyn Error + Send + Sync>> {
    let mut after = Position::START;
    loop {
        let page = store.read_all(LogScope::AllTenants, after, 10_000).await?;
        match page.last() {
            Some(last) => after = last.position,
            None => return Ok(after),
        }
    }
}

/// Times the parts of a catch-up separately: reading the log page by page, decoding the
/// payloads, the handler's statements with a transaction per batch (no checkpoint, events
/// already in memory), and a bare round trip.
async fn breakdown(
    store: &PgStore,
    batch_size: usize,
    events: usize,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let per_event = |elapsed: Duration| elapsed.as_secs_f64() * 1e6 / events as f64;

    let started = Instant::now();
    let mut log: Vec<RecordedEvent> = Vec::with_capacity(events);
    let mut after = Position::START;
    let mut pages = 0;
    loop {
        let page = store
            .read_all(LogScope::AllTenants, after, batch_size)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        pages += 1;
        log.extend(page);
    }
    let read = started.elapsed();
    println!(
        "  read the log:        {:>6.2} s  {:>6.1} us/event  ({pages} pages of {batch_size}, {:.1} ms per page)",
        read.as_secs_f64(),
        per_event(read),
        read.as_secs_f64() * 1e3 / f64::from(pages.max(1))
    );

    let started = Instant::now();
    let decoded = log
        .iter()
        .map(|event| event.decode::<OrderEvent>())
        .collect::<Result<Vec<_>, _>>()?;
    let decode = started.elapsed();
    println!(
        "  decode payloads:     {:>6.2} s  {:>6.1} us/event",
        decode.as_secs_f64(),
        per_event(decode)
    );

    // The same handler on a copy of the table, driven without the runner.
    let copy = OrderList::in_schema(&format!("{SCHEMA}_copy"));
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA}_copy CASCADE"))
        .execute(store.pool())
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {SCHEMA}_copy"))
        .execute(store.pool())
        .await?;
    copy.create_table(store).await?;
    let mut handler = copy.clone();
    let started = Instant::now();
    for (events, envelopes) in decoded.chunks(batch_size).zip(log.chunks(batch_size)) {
        let mut transaction = store.begin(LogScope::AllTenants).await?;
        for (event, envelope) in events.iter().zip(envelopes) {
            Projection::<PgStore>::handle(&mut handler, &mut transaction, event, envelope)
                .await
                .map_err(|error| -> Box<dyn Error + Send + Sync> { error })?;
        }
        store.commit(transaction).await?;
    }
    let handle = started.elapsed();
    println!(
        "  handler statements:  {:>6.2} s  {:>6.1} us/event  (1 statement per event, a transaction per {batch_size})",
        handle.as_secs_f64(),
        per_event(handle)
    );
    sqlx::query(&format!("DROP SCHEMA {SCHEMA}_copy CASCADE"))
        .execute(store.pool())
        .await?;

    let mut connection = store.pool().acquire().await?;
    let rounds = 2_000;
    let started = Instant::now();
    for _ in 0..rounds {
        sqlx::query("SELECT 1").execute(&mut *connection).await?;
    }
    let round_trip = started.elapsed() / rounds;
    println!(
        "  one round trip:      {:>6.1} us (SELECT 1): {:.2} s for {events} of them",
        round_trip.as_secs_f64() * 1e6,
        round_trip.as_secs_f64() * events as f64
    );
    Ok(())
}
