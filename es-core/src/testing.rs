//! Given/when/then tests for aggregates, run on the pure decide and apply logic.
//!
//! ```
//! # use es_core::{Aggregate, Apply, Event, Handle};
//! # use schemars::JsonSchema;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
//! # pub struct Deposited { pub amount: i64 }
//! # #[derive(Debug, Clone, PartialEq, Event)]
//! # pub enum AccountEvent { Deposited(Deposited) }
//! # #[derive(Debug, Default, Aggregate)]
//! # #[aggregate(name = "account", event = AccountEvent)]
//! # pub struct Account { balance: i64 }
//! # impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount; } }
//! # pub struct Withdraw(i64);
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("insufficient funds")]
//! # pub struct InsufficientFunds;
//! # impl Handle<Withdraw> for Account {
//! #     type Error = InsufficientFunds;
//! #     fn handle(&self, c: &Withdraw) -> Result<Vec<AccountEvent>, InsufficientFunds> {
//! #         if c.0 > self.balance { Err(InsufficientFunds) } else { Ok(vec![]) }
//! #     }
//! # }
//! use es_core::testing::given;
//!
//! given::<Account>([AccountEvent::Deposited(Deposited { amount: 10 })])
//!     .when(Withdraw(20))
//!     .then_error(InsufficientFunds);
//! ```

use std::fmt::Debug;

use crate::aggregate::{Aggregate, Handle};
use crate::event::Event;

/// Starts a test from the events that already happened.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in events {
        state.apply_event(&event);
    }
    Given { state }
}

/// Starts a test from a fresh aggregate.
pub fn given_no_events<A: Aggregate>() -> Given<A> {
    Given {
        state: A::default(),
    }
}

/// The state built from the given events.
#[derive(Debug)]
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` on the state.
    pub fn when<C>(self, command: C) -> When<A, C>
    where
        A: Handle<C>,
    {
        let result = self.state.handle(&command);
        When {
            state: self.state,
            result,
        }
    }

    /// The state, for assertions of its own.
    pub fn state(&self) -> &A {
        &self.state
    }
}

/// The outcome of a command decided in a test.
#[derive(Debug)]
pub struct When<A: Handle<C>, C> {
    state: A,
    result: Result<Vec<A::Event>, <A as Handle<C>>::Error>,
}

impl<A: Handle<C>, C> When<A, C>
where
    A::Event: Debug + PartialEq,
    <A as Handle<C>>::Error: Debug,
{
    /// Asserts the command produced exactly `expected`, and that each event survives encoding
    /// and decoding unchanged. Returns the state after applying them.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(error) => {
                panic!("expected events {expected:?}, but the command was rejected: {error:?}")
            }
        };
        assert_eq!(
            events, expected,
            "the command produced other events than expected"
        );
        let mut state = self.state;
        for event in &events {
            assert_round_trip(event);
            state.apply_event(event);
        }
        state
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: <A as Handle<C>>::Error)
    where
        <A as Handle<C>>::Error: PartialEq,
    {
        match self.result {
            Ok(events) => {
                panic!("expected the error {expected:?}, but the command produced {events:?}")
            }
            Err(error) => assert_eq!(
                error, expected,
                "the command was rejected with another error"
            ),
        }
    }

    /// Asserts the command was rejected with an error whose message is `expected`.
    #[track_caller]
    pub fn then_error_message(self, expected: &str) {
        match self.result {
            Ok(events) => {
                panic!("expected the error \"{expected}\", but the command produced {events:?}")
            }
            Err(error) => assert_eq!(
                error.to_string(),
                expected,
                "the command was rejected with another error"
            ),
        }
    }
}

/// Asserts that `event` decodes from its own encoding to an equal value.
#[track_caller]
pub fn assert_round_trip<E: Event + Debug + PartialEq>(event: &E) {
    let payload = event
        .encode()
        .unwrap_or_else(|error| panic!("event {event:?} does not serialize: {error}"));
    let decoded = E::decode(event.event_type(), event.schema_version(), payload.as_str())
        .unwrap_or_else(|error| {
            panic!("event {event:?} does not decode from its own encoding {payload}: {error}")
        });
    assert_eq!(
        &decoded, event,
        "event changed through encoding and decoding"
    );
}
