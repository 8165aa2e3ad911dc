//! Generated code triggers no lint, even with every warning denied and public items
//! documented, for public, crate-visible and private enums with data-less events and
//! struct-like variants.
#![deny(warnings, missing_docs, unreachable_pub, missing_debug_implementations, unused_qualifications)]
#![deny(clippy::all, clippy::pedantic)]

use es_core::{Aggregate, Apply, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A payload.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    /// The total.
    pub total: i64,
}

/// An older payload.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlacedV1 {
    /// The total in cents.
    pub cents: i64,
}

impl From<PlacedV1> for Placed {
    fn from(v1: PlacedV1) -> Self {
        Placed { total: v1.cents }
    }
}

/// An older payload of a struct-like variant.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PaidV1 {
    /// Whole euros.
    pub euros: i64,
}

impl From<PaidV1> for order_event::Paid {
    fn from(v1: PaidV1) -> Self {
        order_event::Paid {
            amount_cents: v1.euros * 100,
        }
    }
}

/// Public events.
#[derive(Debug, Event)]
pub enum OrderEvent {
    /// Placed.
    #[event(version = 2, upcast(1 = PlacedV1))]
    Placed(Placed),
    /// Shipped.
    Shipped,
    /// Paid.
    #[event(version = 2, upcast(1 = PaidV1), derive(PartialEq, Eq))]
    Paid {
        /// In cents.
        #[serde(rename = "amountCents")]
        amount_cents: i64,
    },
}

/// A public aggregate.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, snapshot_every = 3)]
pub struct Order {
    total: i64,
}

impl Apply<Placed> for Order {
    fn apply(&mut self, event: &Placed) {
        self.total = event.total;
    }
}

impl Apply<order_event::Shipped> for Order {
    fn apply(&mut self, _: &order_event::Shipped) {}
}

impl Apply<order_event::Paid> for Order {
    fn apply(&mut self, event: &order_event::Paid) {
        self.total -= event.amount_cents;
    }
}

mod inner {
    use es_core::{Aggregate, Apply, Event};

    #[derive(Debug, Event)]
    pub(crate) enum CrateEvent {
        Happened,
    }

    #[derive(Debug, Event)]
    enum PrivateEvent {
        Happened,
        Noted { text: String },
    }

    #[derive(Debug, Default, Aggregate)]
    #[aggregate(name = "private", event = PrivateEvent)]
    struct Private;

    impl Apply<private_event::Happened> for Private {
        fn apply(&mut self, _: &private_event::Happened) {}
    }

    impl Apply<private_event::Noted> for Private {
        fn apply(&mut self, _: &private_event::Noted) {}
    }

    #[derive(Debug, Default, Aggregate)]
    #[aggregate(name = "crate", event = CrateEvent)]
    pub(crate) struct Crate;

    impl Apply<crate_event::Happened> for Crate {
        fn apply(&mut self, _: &crate_event::Happened) {}
    }

    pub(crate) fn run() {
        Private.apply_event(&PrivateEvent::Happened);
        Private.apply_event(&PrivateEvent::Noted {
            text: String::new(),
        });
        Crate.apply_event(&CrateEvent::Happened);
    }
}

fn main() {
    inner::run();
    let mut order = Order::default();
    order.apply_event(&OrderEvent::Shipped);
}
