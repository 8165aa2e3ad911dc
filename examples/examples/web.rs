//! The order service over HTTP: see `es_examples::web` for the routes, headers and status codes.
//!
//! ```sh
//! cargo run --example web                                   # SQLite file examples/out/web.db
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example web
//! PORT=8080 cargo run --example web                         # another port (default 3000)
//! ```
//!
//! It stops on Ctrl-C (or SIGTERM): the server finishes its requests, the order list
//! projection stops between batches and releases its lock, pending snapshots are saved.

use std::error::Error;
use std::path::PathBuf;

use es_core::DynStore;
use es_examples::order_list::OrderList;
use es_examples::web::{AppState, router};
use es_postgres::PgStore;
use es_sqlite::SqliteStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // The store is chosen at run time; every handler works on `DynStore`.
    let (store, described) = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let store = PgStore::connect(&url).await.map_err(|e| {
                format!("{e}\n(start PostgreSQL, or unset DATABASE_URL for SQLite)")
            })?;
            (
                DynStore::new_sql(store),
                "PostgreSQL at $DATABASE_URL".to_owned(),
            )
        }
        Err(_) => {
            let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("out");
            std::fs::create_dir_all(&out)?;
            let path = out.join("web.db");
            let store = SqliteStore::open(&path).await?;
            (
                DynStore::new_sql(store),
                format!("SQLite file {}", path.display()),
            )
        }
    };
    let state = AppState::start(store, OrderList::new()).await?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let address = listener.local_addr()?;
    println!("order service on http://{address} ({described})");
    println!("try:");
    println!(
        r#"  curl -i -X POST http://{address}/orders -H 'content-type: application/json' -H 'Idempotency-Key: k-1' \
    -d '{{"order_id":"o-1","customer_id":"alice","items":[{{"product_id":"book","quantity":2,"price":1500}}],
         "shipping_address":{{"street":"1-2-3 Shibuya","city":"Tokyo","postal_code":"150-0002","country":"JP"}}}}'"#
    );
    println!("  curl -i -X POST http://{address}/orders/o-1/reservation -H 'If-Match: \"1\"'");
    println!(
        r#"  curl -i -X POST http://{address}/orders/o-1/payment -H 'content-type: application/json' -d '{{"payment_id":"p-1","amount":3000}}'"#
    );
    println!("  curl -i http://{address}/orders/o-1");
    println!("  curl -i 'http://{address}/orders?after=<X-Position of the last command>'");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    state.shutdown().await;
    println!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
