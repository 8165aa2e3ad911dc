//! Event sourcing for Rust: derive the glue, write the rules, run them on any store.
//!
//! Events are an enum with `#[derive(Event)]`; an aggregate is a struct with
//! `#[derive(Aggregate)]`, one [`Apply`] implementation per event and one [`Handle`]
//! implementation per command. A [`Repository`] loads aggregates from an [`EventStore`]
//! (in-memory here, SQLite or PostgreSQL in their crates), decides commands and appends the
//! resulting events under optimistic concurrency, retrying on conflict.
//!
//! A stream is named by its tenant, its type (the aggregate's name) and its id ([`StreamKey`]);
//! a service without tenants never names one. Projections ([`projection`]) build read models
//! from the global log, integration events ([`integration`]) publish it to a broker and
//! consume other services' events exactly once, and [`DynStore`] lets a service pick its store
//! at run time.
//!
//! ```
//! use es_core::{Aggregate, Apply, CommandContext, Event, Handle, MemoryStore, Repository};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
//! pub struct Deposited { pub amount: i64 }
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum AccountEvent {
//!     Opened,
//!     Deposited(Deposited),
//! }
//!
//! #[derive(Debug, Default, Aggregate)]
//! #[aggregate(name = "account", event = AccountEvent)]
//! pub struct Account { open: bool, balance: i64 }
//!
//! impl Apply<account_event::Opened> for Account {
//!     fn apply(&mut self, _: &account_event::Opened) { self.open = true; }
//! }
//! impl Apply<Deposited> for Account {
//!     fn apply(&mut self, event: &Deposited) { self.balance += event.amount; }
//! }
//!
//! pub struct Deposit(pub i64);
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("deposits must be positive")]
//! pub struct InvalidAmount;
//!
//! impl Handle<Deposit> for Account {
//!     type Error = InvalidAmount;
//!     const CREATES: bool = true; // a first deposit opens the account
//!     fn handle(&self, command: &Deposit) -> Result<Vec<AccountEvent>, InvalidAmount> {
//!         if command.0 <= 0 { return Err(InvalidAmount); }
//!         let opened = (!self.open).then_some(AccountEvent::Opened);
//!         Ok(opened.into_iter().chain([AccountEvent::Deposited(Deposited { amount: command.0 })]).collect())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let accounts = Repository::<Account, _>::new(MemoryStore::new());
//! accounts.execute("acc-1", &Deposit(50), &CommandContext::new()).await?;
//! accounts.execute("acc-1", &Deposit(25), &CommandContext::new()).await?;
//! let loaded = accounts.load("acc-1").await?;
//! assert_eq!((loaded.state.balance, loaded.version), (75, 3));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod aggregate;
pub mod asyncapi;
pub mod backoff;
pub mod contract;
mod dyn_store;
mod envelope;
mod event;
pub mod integration;
mod json;
mod memory;
pub mod projection;
mod repository;
pub mod schema;
pub mod sql;
mod store;
mod stream;
pub mod testing;

#[cfg(feature = "conformance")]
pub mod conformance;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use aggregate::{Aggregate, Apply, Handle};
pub use dyn_store::{DynLock, DynStore, DynTransaction};
pub use envelope::{CommandContext, InvalidPosition, Metadata, NewEvent, Position, RecordedEvent};
pub use event::{DecodeError, Event, EventSchema, EventType};
pub use json::{EncodeError, RawJson};
pub use memory::{MemoryLock, MemoryStore, MemoryTransaction};
pub use repository::{
    DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF, ExecuteError, Executed, LoadError, Loaded,
    Repository, StartedFrom, TenantRepositories,
};
pub use store::{
    AppendOutcome, AppendedRange, EventStore, EventStream, ExpectedVersion, ReplayedEvent,
    Snapshot, StoreError, Until,
};
pub use stream::{DEFAULT_TENANT, InvalidTenant, LogScope, StreamKey, StreamKeyBuf, Tenant};

/// Derives [`Event`] for an enum of domain events. See the crate documentation of `es-derive`
/// for the attribute table.
#[cfg(feature = "derive")]
pub use es_derive::Event;

/// Derives [`Aggregate`] for a struct. See the crate documentation of `es-derive` for the
/// attribute table.
#[cfg(feature = "derive")]
pub use es_derive::Aggregate;
