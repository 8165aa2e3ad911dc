use es_core::Event;

#[derive(Event)]
pub enum OrderEvent {
    Placed { total: i64 },
    Shipped {},
}

fn main() {}
