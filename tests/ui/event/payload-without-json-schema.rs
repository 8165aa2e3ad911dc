use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Placed {
    pub total: i64,
}

#[derive(Event)]
pub enum OrderEvent {
    Placed(Placed),
}

fn main() {}
