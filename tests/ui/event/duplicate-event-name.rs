use es_core::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Replaced {
    pub total: i64,
}

#[derive(Event)]
pub enum OrderEvent {
    Placed(Placed),
    #[event(name = "Placed")]
    Replaced(Replaced),
}

fn main() {}
