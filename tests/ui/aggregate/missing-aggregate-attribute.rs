use es_core::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(Default, Aggregate)]
pub struct Order {
    total: i64,
}

fn main() {}
