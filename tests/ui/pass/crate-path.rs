//! `#[es(crate = "...")]` points generated code at a re-export of es-core.

mod framework {
    pub use ::es_core as es;
}

use framework::es::{Aggregate, Apply, Event};

#[derive(Event)]
#[es(crate = "crate::framework::es")]
pub enum CounterEvent {
    Incremented,
}

#[derive(Default, Aggregate)]
#[es(crate = "crate::framework::es")]
#[aggregate(name = "counter", event = CounterEvent)]
pub struct Counter {
    count: u64,
}

impl Apply<counter_event::Incremented> for Counter {
    fn apply(&mut self, _: &counter_event::Incremented) {
        self.count += 1;
    }
}

fn main() {
    let mut counter = Counter::default();
    counter.apply_event(&CounterEvent::Incremented);
    assert_eq!(counter.count, 1);
    assert_eq!(CounterEvent::TYPES[0].name, "Incremented");
}
