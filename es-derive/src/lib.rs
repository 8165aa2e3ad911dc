//! Derive macros for [es-core](https://docs.rs/es-core): `#[derive(Event)]` on an enum of domain
//! events and `#[derive(Aggregate)]` on an aggregate struct. Use them through `es_core`, which
//! re-exports both; this crate is an implementation detail.
//!
//! ```
//! use es_core::{Aggregate, Apply, Event};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! pub struct Placed { pub total: i64 }
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! pub struct PlacedV1 { pub cents: i64 }
//! impl From<PlacedV1> for Placed {
//!     fn from(v1: PlacedV1) -> Self { Placed { total: v1.cents } }
//! }
//!
//! #[derive(Event)]
//! pub enum OrderEvent {
//!     #[event(version = 2, upcast(1 = PlacedV1), aliases = ["OrderPlaced"])]
//!     Placed(Placed),
//!     #[event(name = "OrderShipped")]
//!     Shipped,
//! }
//!
//! #[derive(Default, Serialize, Deserialize, Aggregate)]
//! #[aggregate(name = "order", event = OrderEvent, snapshot_every = 10)]
//! pub struct Order { total: i64, shipped: bool }
//!
//! impl Apply<Placed> for Order {
//!     fn apply(&mut self, event: &Placed) { self.total = event.total; }
//! }
//! impl Apply<order_event::Shipped> for Order {
//!     fn apply(&mut self, _: &order_event::Shipped) { self.shipped = true; }
//! }
//!
//! let old = OrderEvent::decode("OrderPlaced", 1, r#"{"cents": 250}"#).unwrap();
//! assert!(matches!(old, OrderEvent::Placed(Placed { total: 250 })));
//! ```
//!
//! # `#[derive(Event)]`
//!
//! Each variant is one event type: a newtype variant holding its payload struct, a struct-like
//! variant with named fields, or a unit variant for an event without data. The stored payload
//! is the payload's own JSON (`{}` for a unit variant); the event type name and schema version
//! are stored beside it.
//!
//! Variants that are not a payload type of their own get one in a module named after the enum
//! in snake case, for their `Apply` implementation:
//!
//! - a unit variant `Shipped` of `OrderEvent` gets the marker type `order_event::Shipped`;
//! - a struct variant `Paid { amount_cents: i64 }` gets the payload struct
//!   `order_event::Paid { pub amount_cents: i64 }`, deriving `Debug`, `Clone`, `Serialize`,
//!   `Deserialize` and `JsonSchema` (plus those of `derive(...)`). Its fields keep their
//!   attributes (`#[serde(...)]`, `#[schemars(...)]`, doc comments) and the variant's doc
//!   comments and `#[serde(...)]`/`#[schemars(...)]` attributes become the struct's, so the
//!   JSON and the schema are what the same struct written by hand would give. It works exactly
//!   as a newtype variant's payload: `impl Apply<order_event::Paid>`, `upcast(1 = PaidV1)` with
//!   `impl From<PaidV1> for order_event::Paid`. Applying and encoding build the struct from the
//!   variant's fields by cloning them; for large payloads on hot paths, prefer a newtype variant.
//!   The module imports its parent (`use super::*`), so field types resolve as in the enum.
//!
//! | attribute | on | meaning |
//! |---|---|---|
//! | `#[event(name = "...")]` | variant | the stable stored name; default: the variant's name |
//! | `#[event(aliases = ["...", ...])]` | variant | former names that still decode as this event |
//! | `#[event(version = N)]` | variant | the current schema version, 1 or more; default 1 |
//! | `#[event(upcast(1 = TypeV1, 2 = TypeV2, ...))]` | variant | the payload type of every older version, 1 to N-1; version k loads as `TypeVk` and converts step by step with `From` into the next version's type, ending at the variant's payload type |
//! | `#[event(upcast(1 = TypeV1 with path::to_fn))]` | variant | the same step through a function `fn(TypeV1) -> <next type>` instead of `From` |
//! | `#[event(derive(PartialEq, Eq, ...))]` | struct variant | more derives for its generated payload struct |
//! | `#[serde(...)]`, `#[schemars(...)]`, `///` | struct variant or its fields | kept on the generated payload struct and its fields |
//! | `#[es(crate = "path")]` | enum | where es-core is, for crates that re-export it; default `::es_core` |
//!
//! Payload types (current and older) implement `Serialize`, `Deserialize` and
//! `schemars::JsonSchema`; a missing one is a compile error on the payload type saying what to
//! derive. Names and aliases are unique across the enum, and each variant has a payload type of
//! its own, because apply logic is chosen by payload type.
//!
//! `Event::schemas` gives the JSON Schema of every version, each generated on its own and titled
//! `"<name> v<N>"`; `es_core::schema::SchemaSet` exports them with samples and checks that
//! what was published keeps loading.
//!
//! # `#[derive(Aggregate)]`
//!
//! | attribute | meaning |
//! |---|---|
//! | `#[aggregate(name = "...")]` | required: the stable stream type stored with every event |
//! | `#[aggregate(event = Type)]` | required: the `#[derive(Event)]` enum the aggregate is made of |
//! | `#[aggregate(snapshot_every = N)]` | take a snapshot each time the stream passes a multiple of N events; the struct must implement `Serialize` and `Deserialize` |
//! | `#[aggregate(state_version = N)]` | with `snapshot_every`: the version of the snapshot's shape; bump it when the struct changes so old snapshots are ignored; default 1 |
//! | `#[es(crate = "path")]` | where es-core is; default `::es_core` |
//!
//! The generated `apply` is an exhaustive `match` over the event enum calling one
//! `impl Apply<Payload> for Aggregate` per event; a missing implementation is a compile error
//! naming the aggregate and the event.

mod aggregate;
mod ast;
mod attr;
mod check;
mod ctxt;
mod event;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `es_core::Event` for an enum of events; see the crate documentation.
#[proc_macro_derive(Event, attributes(event, es, serde, schemars))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::derive(&parse_macro_input!(input as DeriveInput)).into()
}

/// Derives `es_core::Aggregate` for a struct; see the crate documentation.
#[proc_macro_derive(Aggregate, attributes(aggregate, es))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    aggregate::derive(&parse_macro_input!(input as DeriveInput)).into()
}

#[cfg(test)]
mod tests;
