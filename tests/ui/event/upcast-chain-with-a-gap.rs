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

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct PlacedV3 {
    pub total: i64,
}

impl From<PlacedV3> for Placed {
    fn from(v3: PlacedV3) -> Self {
        Placed { total: v3.total }
    }
}

#[derive(Event)]
pub enum OrderEvent {
    #[event(version = 4, upcast(1 = PlacedV1, 3 = PlacedV3))]
    Placed(Placed),
}

fn main() {}
