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

impl From<PlacedV1> for Placed {
    fn from(v1: PlacedV1) -> Self {
        Placed { total: v1.cents }
    }
}

#[derive(Event)]
pub enum OrderEvent {
    #[event(version = 2, upcast(1 = PlacedV1, 2 = Placed))]
    Placed(Placed),
}

fn main() {}
