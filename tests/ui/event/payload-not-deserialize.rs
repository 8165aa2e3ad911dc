use es_core::Event;
use schemars::JsonSchema;
use serde::Serialize;

#[derive(Serialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Event)]
pub enum OrderEvent {
    Placed(Placed),
}

fn main() {}
