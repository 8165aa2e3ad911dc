//! The order service's integration events: the public contract other services consume over a
//! broker, kept apart from the stored `OrderEvent`s so the order service can change its own
//! events without breaking them. A relay maps the stored events to these ([`from_order_event`]).

use chrono::{DateTime, Utc};
use es_core::{Event, RecordedEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::order::{Cents, OrderEvent};

/// An order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// What it costs.
    pub total_amount: Cents,
    /// How many items, quantities added up.
    pub item_count: u32,
    /// When.
    pub placed_at: DateTime<Utc>,
}

/// An order was confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: String,
    /// When.
    pub confirmed_at: DateTime<Utc>,
}

/// An order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: String,
    /// When.
    pub cancelled_at: DateTime<Utc>,
}

/// What other services learn about orders.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum OrderIntegrationEvent {
    /// See [`OrderPlaced`].
    OrderPlaced(OrderPlaced),
    /// See [`OrderConfirmed`].
    OrderConfirmed(OrderConfirmed),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
}

/// The integration event of a stored order event, if it has one: placed, confirmed and
/// cancelled orders are published; inventory and payment steps stay inside the service.
pub fn from_order_event(
    event: &OrderEvent,
    envelope: &RecordedEvent,
) -> Option<OrderIntegrationEvent> {
    let order_id = envelope.stream_id.clone();
    match event {
        OrderEvent::OrderCreated(created) => {
            Some(OrderIntegrationEvent::OrderPlaced(OrderPlaced {
                order_id,
                customer_id: created.customer_id.clone(),
                total_amount: created.total_amount,
                item_count: created.items.iter().map(|item| item.quantity).sum(),
                placed_at: created.created_at,
            }))
        }
        OrderEvent::OrderConfirmed(confirmed) => {
            Some(OrderIntegrationEvent::OrderConfirmed(OrderConfirmed {
                order_id,
                confirmed_at: confirmed.confirmed_at,
            }))
        }
        OrderEvent::OrderCancelled(cancelled) => {
            Some(OrderIntegrationEvent::OrderCancelled(OrderCancelled {
                order_id,
                reason: cancelled.reason.clone(),
                cancelled_at: cancelled.cancelled_at,
            }))
        }
        OrderEvent::InventoryReserved(_) | OrderEvent::PaymentProcessed(_) => None,
    }
}
