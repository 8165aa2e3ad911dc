use es_core::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct DepositedV1 {
    pub euros: i64,
}

#[derive(Event)]
pub enum AccountEvent {
    #[event(version = 2, upcast(1 = DepositedV1))]
    Deposited { amount_cents: i64 },
}

fn main() {}
