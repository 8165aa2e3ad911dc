use es_core::{Aggregate, Apply, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Event)]
pub enum OrderEvent {
    Placed(Placed),
}

#[derive(Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, snapshots_every = 10)]
pub struct Order {
    total: i64,
}

impl Apply<Placed> for Order {
    fn apply(&mut self, event: &Placed) {
        self.total = event.total;
    }
}

fn main() {}
