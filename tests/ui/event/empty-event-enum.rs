use es_core::Event;

#[derive(Event)]
pub enum OrderEvent {}

fn main() {}
