//! A bank account: an aggregate to run repositories on in these tests.

use es_core::{Aggregate, Apply, Event, Handle};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The account was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Opened {
    pub owner: String,
}

/// Money came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deposited {
    pub amount: i64,
}

/// Everything that happens to an account.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
}

/// A bank account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, snapshot_every = 5)]
pub struct Account {
    pub open: bool,
    pub owner: String,
    pub balance: i64,
    pub movements: u64,
}

impl Apply<Opened> for Account {
    fn apply(&mut self, event: &Opened) {
        self.open = true;
        self.owner.clone_from(&event.owner);
    }
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
        self.movements += 1;
    }
}

/// Why an account command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("account already opened")]
    AlreadyOpen,
    #[error("account is not open")]
    NotOpen,
    #[error("amount must be positive")]
    InvalidAmount,
}

/// Open an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub owner: String,
}

/// Put money in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deposit(pub i64);

impl Handle<Open> for Account {
    type Error = AccountError;
    const CREATES: bool = true;
    fn handle(&self, command: &Open) -> Result<Vec<AccountEvent>, AccountError> {
        if self.open {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(vec![AccountEvent::Opened(Opened {
            owner: command.owner.clone(),
        })])
    }
}

impl Handle<Deposit> for Account {
    type Error = AccountError;
    fn handle(&self, command: &Deposit) -> Result<Vec<AccountEvent>, AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        if command.0 <= 0 {
            return Err(AccountError::InvalidAmount);
        }
        Ok(vec![AccountEvent::Deposited(Deposited {
            amount: command.0,
        })])
    }
}
