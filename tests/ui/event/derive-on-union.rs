use es_core::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Event)]
pub union OrderEvent {
    pub total: i64,
}

fn main() {}
