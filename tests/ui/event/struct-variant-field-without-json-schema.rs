use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Money {
    pub cents: i64,
}

#[derive(Event)]
pub enum OrderEvent {
    Placed { total: Money },
}

fn main() {}
