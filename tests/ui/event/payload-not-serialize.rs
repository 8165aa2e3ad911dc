use es_core::Event;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Event)]
pub enum OrderEvent {
    Placed(Placed),
}

fn main() {}
