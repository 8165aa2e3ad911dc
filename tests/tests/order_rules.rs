//! Every rule of the order example, as given/when/then tests on the pure decide logic.

use chrono::{DateTime, TimeZone, Utc};
use es_core::testing::{given, given_no_events};
use es_examples::order::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, minute, 0).unwrap()
}

fn address() -> Address {
    Address {
        street: "1 Main St".into(),
        city: "Springfield".into(),
        postal_code: "12345".into(),
        country: "US".into(),
    }
}

fn items() -> Vec<OrderItem> {
    vec![
        OrderItem::new("book", 2, 1_500),
        OrderItem::new("pen", 3, 200),
    ]
}

fn created() -> OrderEvent {
    OrderEvent::OrderCreated(OrderCreated {
        customer_id: "alice".into(),
        items: items(),
        shipping_address: address(),
        total_amount: 3_600,
        created_at: at(0),
    })
}

fn reserved() -> OrderEvent {
    OrderEvent::InventoryReserved(InventoryReserved {
        reservation_id: "res-1".into(),
        items: items(),
    })
}

fn paid() -> OrderEvent {
    OrderEvent::PaymentProcessed(PaymentProcessed {
        payment_id: "pay-1".into(),
        amount: 3_600,
        processed_at: at(2),
    })
}

fn confirmed() -> OrderEvent {
    OrderEvent::OrderConfirmed(OrderConfirmed {
        confirmed_at: at(3),
    })
}

fn cancelled() -> OrderEvent {
    OrderEvent::OrderCancelled(OrderCancelled {
        reason: "changed my mind".into(),
        cancelled_at: at(4),
    })
}

fn create() -> CreateOrder {
    CreateOrder {
        customer_id: "alice".into(),
        items: items(),
        shipping_address: address(),
        at: at(0),
    }
}

fn reserve() -> ReserveInventory {
    ReserveInventory {
        reservation_id: "res-1".into(),
    }
}

fn pay(amount: Cents) -> ProcessPayment {
    ProcessPayment {
        payment_id: "pay-1".into(),
        amount,
        at: at(2),
    }
}

fn cancel() -> CancelOrder {
    CancelOrder {
        reason: "changed my mind".into(),
        at: at(4),
    }
}

fn invalid(action: &'static str, status: OrderStatus) -> OrderError {
    OrderError::InvalidStatus { action, status }
}

#[test]
fn create_records_the_items_and_their_total() {
    let state = given_no_events::<Order>()
        .when(create())
        .then_events([created()]);
    assert_eq!(
        (state.status, state.total_amount),
        (OrderStatus::Pending, 3_600)
    );
}

#[test]
fn create_twice_is_rejected() {
    given::<Order>([created()])
        .when(create())
        .then_error(OrderError::AlreadyCreated);
}

#[test]
fn create_without_items_is_rejected() {
    let empty = CreateOrder {
        items: vec![],
        ..create()
    };
    given_no_events::<Order>()
        .when(empty)
        .then_error(OrderError::NoItems);
}

#[test]
fn create_with_a_zero_quantity_is_rejected() {
    let zero = CreateOrder {
        items: vec![OrderItem::new("book", 0, 1_500)],
        ..create()
    };
    given_no_events::<Order>()
        .when(zero)
        .then_error(OrderError::InvalidItem {
            product_id: "book".into(),
        });
}

#[test]
fn reserve_inventory_of_a_pending_order() {
    let state = given::<Order>([created()])
        .when(reserve())
        .then_events([reserved()]);
    assert_eq!(state.status, OrderStatus::InventoryReserved);
}

#[test]
fn reserve_inventory_twice_is_rejected() {
    given::<Order>([created(), reserved()])
        .when(reserve())
        .then_error(invalid(
            "reserve inventory for order",
            OrderStatus::InventoryReserved,
        ));
}

#[test]
fn reserve_inventory_of_a_cancelled_order_is_rejected() {
    given::<Order>([created(), cancelled()])
        .when(reserve())
        .then_error(invalid(
            "reserve inventory for order",
            OrderStatus::Cancelled,
        ));
}

#[test]
fn commands_on_a_missing_order_are_rejected() {
    given_no_events::<Order>()
        .when(reserve())
        .then_error(OrderError::NotFound);
    given_no_events::<Order>()
        .when(pay(3_600))
        .then_error(OrderError::NotFound);
    given_no_events::<Order>()
        .when(ConfirmOrder { at: at(3) })
        .then_error(OrderError::NotFound);
    given_no_events::<Order>()
        .when(cancel())
        .then_error(OrderError::NotFound);
}

#[test]
fn payment_of_the_exact_total_is_processed() {
    let state = given::<Order>([created(), reserved()])
        .when(pay(3_600))
        .then_events([paid()]);
    assert_eq!(state.status, OrderStatus::PaymentProcessed);
}

#[test]
fn payment_that_does_not_match_the_total_is_rejected() {
    given::<Order>([created(), reserved()])
        .when(pay(3_500))
        .then_error(OrderError::AmountMismatch {
            amount: 3_500,
            total: 3_600,
        });
    given::<Order>([created(), reserved()])
        .when(pay(3_500))
        .then_error_message("payment amount 3500 does not match order total 3600");
}

#[test]
fn payment_before_inventory_is_reserved_is_rejected() {
    given::<Order>([created()])
        .when(pay(3_600))
        .then_error(invalid("process payment for order", OrderStatus::Pending));
}

#[test]
fn confirm_a_paid_order() {
    let state = given::<Order>([created(), reserved(), paid()])
        .when(ConfirmOrder { at: at(3) })
        .then_events([confirmed()]);
    assert_eq!(
        (state.status, state.confirmed_at),
        (OrderStatus::Confirmed, Some(at(3)))
    );
}

#[test]
fn confirm_before_payment_is_rejected() {
    given::<Order>([created(), reserved()])
        .when(ConfirmOrder { at: at(3) })
        .then_error(invalid("confirm order", OrderStatus::InventoryReserved));
}

#[test]
fn confirm_a_cancelled_order_is_rejected() {
    given::<Order>([created(), cancelled()])
        .when(ConfirmOrder { at: at(3) })
        .then_error(invalid("confirm order", OrderStatus::Cancelled));
}

#[test]
fn cancel_before_confirmation_in_every_open_status() {
    for history in [
        vec![created()],
        vec![created(), reserved()],
        vec![created(), reserved(), paid()],
    ] {
        let state = given::<Order>(history)
            .when(cancel())
            .then_events([cancelled()]);
        assert_eq!(state.status, OrderStatus::Cancelled);
        assert_eq!(
            state.cancellation_reason.as_deref(),
            Some("changed my mind")
        );
    }
}

#[test]
fn cancel_a_confirmed_order_is_rejected() {
    given::<Order>([created(), reserved(), paid(), confirmed()])
        .when(cancel())
        .then_error(invalid("cancel order", OrderStatus::Confirmed));
}

#[test]
fn cancel_twice_is_rejected() {
    given::<Order>([created(), cancelled()])
        .when(cancel())
        .then_error(invalid("cancel order", OrderStatus::Cancelled));
}

#[test]
fn an_order_created_at_version_1_loads_with_its_total() {
    let v1 = serde_json::json!({
        "customer_id": "alice",
        "items": [{"product_id": "book", "quantity": 2, "price": 1500}, {"product_id": "pen", "quantity": 3, "price": 200}],
        "shipping_address": {"street": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"},
        "created_at": "2026-11-23T10:00:00Z"
    });
    let decoded =
        <OrderEvent as es_core::Event>::decode("OrderCreated", 1, &v1.to_string()).unwrap();
    assert_eq!(decoded, created());
}
