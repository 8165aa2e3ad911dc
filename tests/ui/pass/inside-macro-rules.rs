//! The derives work on items written by a `macro_rules!` macro: generated code keeps the
//! call site's hygiene for its locals, so spans borrowed from the user's tokens do not hide them.

use es_core::{Aggregate, Apply, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Tick {
    pub n: u64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct TickV1 {
    pub count: u64,
}

fn upgrade(v1: TickV1) -> Tick {
    Tick { n: v1.count }
}

macro_rules! counter {
    ($event:ident, $aggregate:ident) => {
        #[derive(Event)]
        pub enum $event {
            #[event(version = 2, upcast(1 = TickV1 with upgrade))]
            Tick(Tick),
            Reset,
        }

        #[derive(Default, Serialize, Deserialize, Aggregate)]
        #[aggregate(name = "counter", event = $event, snapshot_every = 10)]
        pub struct $aggregate {
            total: u64,
        }
    };
}

counter!(CounterEvent, Counter);

impl Apply<Tick> for Counter {
    fn apply(&mut self, event: &Tick) {
        self.total += event.n;
    }
}

impl Apply<counter_event::Reset> for Counter {
    fn apply(&mut self, _: &counter_event::Reset) {
        self.total = 0;
    }
}

fn main() {
    let mut counter = Counter::default();
    counter.apply_event(&CounterEvent::decode("Tick", 1, r#"{"count": 3}"#).unwrap());
    assert_eq!(counter.total, 3);
    assert!(counter.encode_state().is_some());
}
