use es_core::Event;

#[derive(Event)]
pub enum OrderEvent<T> {
    Placed(T),
}

fn main() {}
