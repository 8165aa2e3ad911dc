use es_core::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct PlacedV1 {
    pub cents: i64,
}

fn upgrade(v1: PlacedV1) -> i64 {
    v1.cents
}

#[derive(Event)]
pub enum OrderEvent {
    #[event(version = 2, upcast(1 = PlacedV1 with upgrade))]
    Placed(Placed),
}

fn main() {}
