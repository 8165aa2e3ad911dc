//! Aggregates: state folded from events ([`Apply`]) and commands decided on it ([`Handle`]).

use crate::event::Event;
use crate::json::RawJson;

/// An event-sourced aggregate, usually a struct with `#[derive(Aggregate)]`.
///
/// The state starts from [`Default`] and evolves by [`Aggregate::apply_event`], which the derive
/// generates as an exhaustive `match` calling one [`Apply`] implementation per event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    note = "derive it: `#[derive(Default, es_core::Aggregate)] #[aggregate(name = \"...\", event = YourEventEnum)]`"
)]
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The stable stream type name stored with every event of this aggregate.
    const NAME: &'static str;
    /// Take a snapshot whenever the stream version crosses a multiple of this (`None`: never).
    const SNAPSHOT_EVERY: Option<u64> = None;
    /// The version of the snapshot state's schema; snapshots of another version are ignored.
    const STATE_VERSION: u32 = 1;

    /// The events this aggregate is made of.
    type Event: Event;

    /// Evolves the state by one event.
    fn apply_event(&mut self, event: &Self::Event);

    /// Serializes the state for a snapshot; `None` when the aggregate takes no snapshots.
    fn encode_state(&self) -> Option<Result<RawJson, serde_json::Error>> {
        None
    }

    /// Restores the state from a snapshot; `None` when the aggregate takes no snapshots.
    fn decode_state(state: &str) -> Option<Result<Self, serde_json::Error>> {
        let _ = state;
        None
    }
}

/// Apply logic for one event: how the state changes when `E` happened.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no apply logic for event `{E}`",
    label = "`{Self}` does not implement `Apply<{E}>`",
    note = "every event of an aggregate needs apply logic: write `impl es_core::Apply<{E}> for {Self} {{ fn apply(&mut self, event: &{E}) {{ /* change the state */ }} }}`",
    note = "for an event without data, `{E}` is its marker type in the module named after the event enum in snake case, e.g. `order_event::{E}`"
)]
pub trait Apply<E> {
    /// Changes the state to reflect `event`.
    fn apply(&mut self, event: &E);
}

/// Decision logic for one command: the pure step state + command -> events or a domain error.
///
/// It takes the command by reference because the repository may decide again on a newer state
/// after a concurrency conflict.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle command `{C}`",
    note = "write `impl es_core::Handle<{C}> for {Self} {{ type Error = ...; fn handle(&self, command: &{C}) -> Result<Vec<Self::Event>, Self::Error> {{ ... }} }}`"
)]
pub trait Handle<C>: Aggregate {
    /// The domain error a rejected command returns.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether the command may start a new stream. `false` (the default): executed on a stream
    /// that does not exist, the command fails as not found without being decided. Set it to
    /// `true` for the commands that create an aggregate (they are decided on the empty state,
    /// and [`Repository::create`](crate::Repository::create) accepts them).
    const CREATES: bool = false;

    /// Decides which events the command produces, or why it is rejected.
    fn handle(&self, command: &C) -> Result<Vec<Self::Event>, Self::Error>;
}
