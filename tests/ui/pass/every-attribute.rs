//! Every attribute at once: names, aliases, a three-version chain with a `From` step and a
//! function step, data-less events, snapshots with a state version.

use es_core::{Aggregate, Apply, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
    pub currency: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct PlacedV1 {
    pub cents: i64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct PlacedV2 {
    pub total: i64,
}

impl From<PlacedV1> for PlacedV2 {
    fn from(v1: PlacedV1) -> Self {
        PlacedV2 { total: v1.cents }
    }
}

fn euro(v2: PlacedV2) -> Placed {
    Placed { total: v2.total, currency: "EUR".into() }
}

#[derive(Debug, PartialEq, Event)]
pub enum OrderEvent {
    #[event(version = 3, upcast(1 = PlacedV1, 2 = PlacedV2 with euro), aliases = ["OrderPlaced", "Created"])]
    Placed(Placed),
    #[event(name = "OrderShipped")]
    Shipped,
    Cancelled,
}

#[derive(Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, snapshot_every = 10, state_version = 2)]
pub struct Order {
    total: i64,
    shipped: bool,
    cancelled: bool,
}

impl Apply<Placed> for Order {
    fn apply(&mut self, event: &Placed) {
        self.total = event.total;
    }
}

impl Apply<order_event::Shipped> for Order {
    fn apply(&mut self, _: &order_event::Shipped) {
        self.shipped = true;
    }
}

impl Apply<order_event::Cancelled> for Order {
    fn apply(&mut self, _: &order_event::Cancelled) {
        self.cancelled = true;
    }
}

fn main() {
    let v1 = OrderEvent::decode("OrderPlaced", 1, r#"{"cents": 7}"#).unwrap();
    assert_eq!(v1, OrderEvent::Placed(Placed { total: 7, currency: "EUR".into() }));
    assert_eq!(OrderEvent::decode("OrderShipped", 1, "{}").unwrap(), OrderEvent::Shipped);
    assert_eq!(<Order as Aggregate>::NAME, "order");
    assert_eq!(<Order as Aggregate>::STATE_VERSION, 2);
    let mut order = Order::default();
    order.apply_event(&v1);
    order.apply_event(&OrderEvent::Shipped);
    assert_eq!((order.total, order.shipped, order.cancelled), (7, true, false));
}
