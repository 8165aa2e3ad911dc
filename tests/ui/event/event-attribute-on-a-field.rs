use es_core::Event;

#[derive(Event)]
pub enum OrderEvent {
    Placed {
        #[event(name = "sum")]
        total: i64,
    },
}

fn main() {}
