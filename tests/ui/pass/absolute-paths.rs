//! Generated code names the runtime by absolute paths only: local modules called `serde`,
//! `core`, `std` and `es_core` do not get in its way.

mod serde {}
mod core {}
mod std {}
mod es_core {}

#[derive(::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
pub struct Placed {
    pub total: i64,
}

#[derive(::es_core::Event)]
pub enum OrderEvent {
    Placed(Placed),
    Shipped,
}

#[derive(Default, ::es_core::Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
pub struct Order {
    total: i64,
}

impl ::es_core::Apply<Placed> for Order {
    fn apply(&mut self, event: &Placed) {
        self.total = event.total;
    }
}

impl ::es_core::Apply<order_event::Shipped> for Order {
    fn apply(&mut self, _: &order_event::Shipped) {}
}

fn main() {}
