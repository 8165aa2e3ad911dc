//! The order: created with items, inventory reserved, payment that must match the total,
//! confirmed, or cancelled before confirmation.

use chrono::{DateTime, Utc};
use es_core::{Aggregate, Apply, Event, Handle};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Money in the smallest currency unit (cents), so totals add up exactly.
pub type Cents = i64;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderItem {
    /// The product bought.
    pub product_id: String,
    /// How many.
    pub quantity: u32,
    /// Unit price.
    pub price: Cents,
}

impl OrderItem {
    /// An item line.
    pub fn new(product_id: &str, quantity: u32, price: Cents) -> Self {
        Self {
            product_id: product_id.to_owned(),
            quantity,
            price,
        }
    }
}

/// Where the order ships to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO country code.
    pub country: String,
}

/// The sum of price x quantity over the items.
pub fn total_of(items: &[OrderItem]) -> Cents {
    items
        .iter()
        .map(|item| item.price * Cents::from(item.quantity))
        .sum()
}

/// An order was placed (version 2: carries its total).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// Where it ships.
    pub shipping_address: Address,
    /// The amount the payment must match.
    pub total_amount: Cents,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
}

/// `OrderCreated` as version 1 stored it, before the total was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreatedV1 {
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// Where it ships.
    pub shipping_address: Address,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
}

impl From<OrderCreatedV1> for OrderCreated {
    fn from(v1: OrderCreatedV1) -> Self {
        Self {
            total_amount: total_of(&v1.items),
            customer_id: v1.customer_id,
            items: v1.items,
            shipping_address: v1.shipping_address,
            created_at: v1.created_at,
        }
    }
}

/// Stock was set aside for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InventoryReserved {
    /// The inventory service's reservation.
    pub reservation_id: String,
    /// The items reserved.
    pub items: Vec<OrderItem>,
}

/// The customer paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentProcessed {
    /// The payment service's id.
    pub payment_id: String,
    /// The amount paid: the order total.
    pub amount: Cents,
    /// When.
    pub processed_at: DateTime<Utc>,
}

/// The order is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    /// When.
    pub confirmed_at: DateTime<Utc>,
}

/// The order was cancelled before confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    /// Why.
    pub reason: String,
    /// When.
    pub cancelled_at: DateTime<Utc>,
}

/// Everything that happens to an order.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum OrderEvent {
    /// See [`OrderCreated`]; version 1 payloads load through [`OrderCreatedV1`].
    #[event(version = 2, upcast(1 = OrderCreatedV1))]
    OrderCreated(OrderCreated),
    /// See [`InventoryReserved`].
    InventoryReserved(InventoryReserved),
    /// See [`PaymentProcessed`].
    PaymentProcessed(PaymentProcessed),
    /// See [`OrderConfirmed`].
    OrderConfirmed(OrderConfirmed),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Not placed yet: the stream is empty.
    #[default]
    New,
    /// Placed, waiting for inventory.
    Pending,
    /// Inventory reserved, waiting for payment.
    InventoryReserved,
    /// Paid, waiting for confirmation.
    PaymentProcessed,
    /// Confirmed: final.
    Confirmed,
    /// Cancelled: final.
    Cancelled,
}

/// The order aggregate: the state its rules need, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, snapshot_every = 10)]
pub struct Order {
    /// Where the order is.
    pub status: OrderStatus,
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// The total the payment must match.
    pub total_amount: Cents,
    /// When it was placed.
    pub created_at: Option<DateTime<Utc>>,
    /// When it was confirmed.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// Why it was cancelled.
    pub cancellation_reason: Option<String>,
}

impl Apply<OrderCreated> for Order {
    fn apply(&mut self, event: &OrderCreated) {
        self.status = OrderStatus::Pending;
        self.customer_id.clone_from(&event.customer_id);
        self.items.clone_from(&event.items);
        self.total_amount = event.total_amount;
        self.created_at = Some(event.created_at);
    }
}

impl Apply<InventoryReserved> for Order {
    fn apply(&mut self, _: &InventoryReserved) {
        self.status = OrderStatus::InventoryReserved;
    }
}

impl Apply<PaymentProcessed> for Order {
    fn apply(&mut self, _: &PaymentProcessed) {
        self.status = OrderStatus::PaymentProcessed;
    }
}

impl Apply<OrderConfirmed> for Order {
    fn apply(&mut self, event: &OrderConfirmed) {
        self.status = OrderStatus::Confirmed;
        self.confirmed_at = Some(event.confirmed_at);
    }
}

impl Apply<OrderCancelled> for Order {
    fn apply(&mut self, event: &OrderCancelled) {
        self.status = OrderStatus::Cancelled;
        self.cancellation_reason = Some(event.reason.clone());
    }
}

/// Why an order command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order was already placed.
    #[error("order already exists")]
    AlreadyCreated,
    /// An order needs at least one item.
    #[error("an order needs at least one item")]
    NoItems,
    /// Quantities are positive and prices not negative.
    #[error("item `{product_id}` has quantity 0 or a negative price")]
    InvalidItem {
        /// The offending item.
        product_id: String,
    },
    /// The order was never placed.
    #[error("order does not exist")]
    NotFound,
    /// The command does not fit the order's status.
    #[error("cannot {action} in {status:?} status")]
    InvalidStatus {
        /// What was attempted.
        action: &'static str,
        /// The order's status.
        status: OrderStatus,
    },
    /// The payment does not match the total.
    #[error("payment amount {amount} does not match order total {total}")]
    AmountMismatch {
        /// Paid.
        amount: Cents,
        /// Due.
        total: Cents,
    },
}

/// Place an order.
#[derive(Debug, Clone)]
pub struct CreateOrder {
    /// Who orders.
    pub customer_id: String,
    /// What.
    pub items: Vec<OrderItem>,
    /// Where to.
    pub shipping_address: Address,
    /// When (commands carry time so deciding stays pure).
    pub at: DateTime<Utc>,
}

/// Reserve stock for a pending order.
#[derive(Debug, Clone)]
pub struct ReserveInventory {
    /// The inventory service's reservation.
    pub reservation_id: String,
}

/// Record the payment of a reserved order.
#[derive(Debug, Clone)]
pub struct ProcessPayment {
    /// The payment service's id.
    pub payment_id: String,
    /// The amount paid.
    pub amount: Cents,
    /// When.
    pub at: DateTime<Utc>,
}

/// Confirm a paid order.
#[derive(Debug, Clone)]
pub struct ConfirmOrder {
    /// When.
    pub at: DateTime<Utc>,
}

/// Cancel an order that is not confirmed or cancelled yet.
#[derive(Debug, Clone)]
pub struct CancelOrder {
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl Order {
    fn require(&self, expected: OrderStatus, action: &'static str) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::New => Err(OrderError::NotFound),
            status if status == expected => Ok(()),
            status => Err(OrderError::InvalidStatus { action, status }),
        }
    }
}

impl Handle<CreateOrder> for Order {
    type Error = OrderError;
    const CREATES: bool = true;

    fn handle(&self, command: &CreateOrder) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status != OrderStatus::New {
            return Err(OrderError::AlreadyCreated);
        }
        if command.items.is_empty() {
            return Err(OrderError::NoItems);
        }
        if let Some(item) = command
            .items
            .iter()
            .find(|item| item.quantity == 0 || item.price < 0)
        {
            return Err(OrderError::InvalidItem {
                product_id: item.product_id.clone(),
            });
        }
        Ok(vec![OrderEvent::OrderCreated(OrderCreated {
            customer_id: command.customer_id.clone(),
            items: command.items.clone(),
            shipping_address: command.shipping_address.clone(),
            total_amount: total_of(&command.items),
            created_at: command.at,
        })])
    }
}

impl Handle<ReserveInventory> for Order {
    type Error = OrderError;

    fn handle(&self, command: &ReserveInventory) -> Result<Vec<OrderEvent>, OrderError> {
        self.require(OrderStatus::Pending, "reserve inventory for order")?;
        Ok(vec![OrderEvent::InventoryReserved(InventoryReserved {
            reservation_id: command.reservation_id.clone(),
            items: self.items.clone(),
        })])
    }
}

impl Handle<ProcessPayment> for Order {
    type Error = OrderError;

    fn handle(&self, command: &ProcessPayment) -> Result<Vec<OrderEvent>, OrderError> {
        self.require(OrderStatus::InventoryReserved, "process payment for order")?;
        if command.amount != self.total_amount {
            return Err(OrderError::AmountMismatch {
                amount: command.amount,
                total: self.total_amount,
            });
        }
        Ok(vec![OrderEvent::PaymentProcessed(PaymentProcessed {
            payment_id: command.payment_id.clone(),
            amount: command.amount,
            processed_at: command.at,
        })])
    }
}

impl Handle<ConfirmOrder> for Order {
    type Error = OrderError;

    fn handle(&self, command: &ConfirmOrder) -> Result<Vec<OrderEvent>, OrderError> {
        self.require(OrderStatus::PaymentProcessed, "confirm order")?;
        Ok(vec![OrderEvent::OrderConfirmed(OrderConfirmed {
            confirmed_at: command.at,
        })])
    }
}

impl Handle<CancelOrder> for Order {
    type Error = OrderError;

    fn handle(&self, command: &CancelOrder) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            OrderStatus::New => Err(OrderError::NotFound),
            status @ (OrderStatus::Confirmed | OrderStatus::Cancelled) => {
                Err(OrderError::InvalidStatus {
                    action: "cancel order",
                    status,
                })
            }
            _ => Ok(vec![OrderEvent::OrderCancelled(OrderCancelled {
                reason: command.reason.clone(),
                cancelled_at: command.at,
            })]),
        }
    }
}
