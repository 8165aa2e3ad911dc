use es_core::{Aggregate, Event};
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

#[derive(Default, Aggregate)]
#[aggregate(name = "order")]
pub struct Order {
    total: i64,
}

fn main() {}
