//! The order list read model written set-based (one multi-row statement per kind of change in a
//! batch) leaves exactly the rows the per-event handler leaves, on SQLite and PostgreSQL, for
//! orders whose events straddle batches and tenants; and a batch holding a bad event is split so
//! that only that event is parked.

use chrono::{TimeZone, Utc};
use es_core::projection::{ProjectionRunner, RetryPolicy};
use es_core::sql::SqlStore;
use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamKey};
use es_examples::order::{
    Address, InventoryReserved, OrderCancelled, OrderConfirmed, OrderCreated, OrderEvent,
    OrderItem, PaymentProcessed, total_of,
};
use es_examples::order_list::{OrderList, OrderRow, PerEvent};

const TENANTS: [&str; 3] = ["default", "acme", "globex"];
const ORDERS: usize = 120;

/// Order `n`'s events: how far it gets depends on `n`; some are cancelled early.
fn lifecycle(n: usize) -> Vec<OrderEvent> {
    let items = vec![OrderItem::new("book", 1 + (n % 3) as u32, 1_500)];
    let at = Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap();
    let mut events = vec![OrderEvent::OrderCreated(OrderCreated {
        customer_id: format!("customer-{}", n % 7),
        total_amount: total_of(&items),
        items,
        shipping_address: Address {
            street: "1-2-3 Shibuya".into(),
            city: "Tokyo".into(),
            postal_code: "150-0002".into(),
            country: "JP".into(),
        },
        created_at: at,
    })];
    let cancel = |minutes| {
        OrderEvent::OrderCancelled(OrderCancelled {
            reason: format!("reason {n}"),
            cancelled_at: at + chrono::Duration::minutes(minutes),
        })
    };
    match n % 6 {
        0 => {}
        1 => events.push(cancel(1)),
        stage => {
            events.push(OrderEvent::InventoryReserved(InventoryReserved {
                reservation_id: format!("res-{n}"),
                items: Vec::new(),
            }));
            if stage == 2 {
                events.push(cancel(2));
            }
            if stage >= 4 {
                events.push(OrderEvent::PaymentProcessed(PaymentProcessed {
                    payment_id: format!("pay-{n}"),
                    amount: 1_500,
                    processed_at: at + chrono::Duration::minutes(3),
                }));
            }
            if stage == 5 {
                events.push(OrderEvent::OrderConfirmed(OrderConfirmed {
                    confirmed_at: at + chrono::Duration::minutes(4),
                }));
            }
        }
    }
    events
}

/// Every order's events, one append per event, stage by stage across all orders, so an order's
/// events land in different batches.
async fn fill<S: EventStore>(store: &S) {
    let lives: Vec<Vec<OrderEvent>> = (0..ORDERS).map(lifecycle).collect();
    let ids: Vec<String> = (0..ORDERS).map(|n| format!("order-{n}")).collect();
    for stage in 0..4 {
        for (n, life) in lives.iter().enumerate() {
            let Some(event) = life.get(stage) else {
                continue;
            };
            let key = StreamKey::new("order", &ids[n]).in_tenant(TENANTS[n % 3]);
            let expected = match stage {
                0 => ExpectedVersion::NoStream,
                _ => ExpectedVersion::Exact(stage as u64),
            };
            let event = NewEvent::encode(event, &Metadata::default()).unwrap();
            store.append(key, expected, vec![event]).await.unwrap();
        }
    }
}

async fn rows<S: SqlStore>(store: &S, list: &OrderList) -> Vec<OrderRow> {
    let mut all = Vec::new();
    for tenant in TENANTS {
        all.extend(list.rows(store, tenant, i64::MAX).await.unwrap());
    }
    all
}

async fn set_based_equals_per_event<S: SqlStore>(
    store: S,
    set_based: OrderList,
    per_event: OrderList,
) {
    set_based.create_table(&store).await.unwrap();
    per_event.create_table(&store).await.unwrap();
    fill(&store).await;
    ProjectionRunner::new(store.clone(), PerEvent(per_event.clone()))
        .catch_up()
        .await
        .unwrap();
    let expected = rows(&store, &per_event).await;
    assert_eq!(expected.len(), ORDERS);
    assert!(expected.iter().any(|row| row.status == "CONFIRMED"));
    assert!(expected.iter().any(|row| row.cancelled_at.is_some()));
    for batch_size in [1, 7, 500] {
        let mut runner =
            ProjectionRunner::new(store.clone(), set_based.clone()).batch_size(batch_size);
        runner.rebuild(|_| {}).await.unwrap();
        assert_eq!(
            rows(&store, &set_based).await,
            expected,
            "batches of {batch_size}"
        );
        assert!(runner.parked().await.unwrap().is_empty());
    }

    // An order whose row went missing: its next event fails alone and is parked; the other
    // events of the batch commit.
    store
        .run(
            &format!(
                "DELETE FROM {} WHERE tenant = 'acme' AND order_id = 'order-1'",
                set_based.table()
            ),
            &[],
        )
        .await
        .unwrap();
    let later = |n: usize| {
        let event = OrderEvent::OrderConfirmed(OrderConfirmed {
            confirmed_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
        });
        (n, NewEvent::encode(&event, &Metadata::default()).unwrap())
    };
    for (n, event) in [later(0), later(1), later(3)] {
        let id = format!("order-{n}");
        let key = StreamKey::new("order", &id).in_tenant(TENANTS[n % 3]);
        let version = store.stream_version(key).await.unwrap().unwrap();
        store
            .append(key, ExpectedVersion::Exact(version), vec![event])
            .await
            .unwrap();
    }
    let mut runner = ProjectionRunner::new(store.clone(), set_based.clone())
        .batch_size(500)
        .retry(RetryPolicy {
            max_attempts: 2,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(1),
        });
    runner.catch_up().await.unwrap();
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        (parked[0].tenant.as_str(), parked[0].stream_id.as_str()),
        ("acme", "order-1")
    );
    assert!(
        parked[0].error.contains("no row for order `order-1`"),
        "{}",
        parked[0].error
    );
    let after = rows(&store, &set_based).await;
    for id in ["order-0", "order-3"] {
        let row = after.iter().find(|row| row.order_id == id).unwrap();
        assert_eq!(row.status, "CONFIRMED", "{id}");
    }
    assert_eq!(
        runner.checkpoint().await.unwrap(),
        store
            .read_all(
                es_core::LogScope::AllTenants,
                es_core::Position::START,
                usize::MAX
            )
            .await
            .unwrap()
            .last()
            .unwrap()
            .position
    );
}

#[tokio::test]
async fn set_based_batches_equal_per_event_handling_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = es_sqlite::SqliteStore::open(dir.path().join("orders.db"))
        .await
        .unwrap();
    set_based_equals_per_event(
        store,
        OrderList::new(),
        OrderList::with_table("order_list_per_event"),
    )
    .await;
}

#[tokio::test]
async fn set_based_batches_equal_per_event_handling_on_postgres() {
    let store = es_postgres::testing::store().await;
    let schema = store.schema().to_owned();
    set_based_equals_per_event(
        store,
        OrderList::in_schema(&schema),
        OrderList::with_table(format!("\"{schema}\".order_list_per_event")),
    )
    .await;
}
