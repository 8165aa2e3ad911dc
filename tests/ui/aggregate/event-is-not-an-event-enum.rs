use es_core::Aggregate;

pub enum OrderEvent {
    Placed,
}

#[derive(Default, Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
pub struct Order {
    total: i64,
}

fn main() {}
