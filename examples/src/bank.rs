//! A bank account: the domain of the benchmarks and of the snapshot property test.

use es_core::{Aggregate, Apply, Event, Handle};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The account was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Opened {
    /// Who owns it.
    pub owner: String,
}

/// Money came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deposited {
    /// How much, in cents.
    pub amount: i64,
}

/// Money went out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Withdrawn {
    /// How much, in cents.
    pub amount: i64,
}

/// Everything that happens to an account.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum AccountEvent {
    /// See [`Opened`].
    Opened(Opened),
    /// See [`Deposited`].
    Deposited(Deposited),
    /// See [`Withdrawn`].
    Withdrawn(Withdrawn),
    /// The account was closed; no data.
    Closed,
}

/// A bank account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, snapshot_every = 5)]
pub struct Account {
    /// Opened and not closed.
    pub open: bool,
    /// The owner.
    pub owner: String,
    /// The balance in cents.
    pub balance: i64,
    /// How many deposits and withdrawals.
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

impl Apply<Withdrawn> for Account {
    fn apply(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
        self.movements += 1;
    }
}

impl Apply<account_event::Closed> for Account {
    fn apply(&mut self, _: &account_event::Closed) {
        self.open = false;
    }
}

/// Why an account command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opening an account twice.
    #[error("account already opened")]
    AlreadyOpen,
    /// The account is not open.
    #[error("account is not open")]
    NotOpen,
    /// Amounts are positive.
    #[error("amount must be positive")]
    InvalidAmount,
    /// A withdrawal larger than the balance.
    #[error("cannot withdraw {requested} with a balance of {balance}")]
    InsufficientFunds {
        /// Asked for.
        requested: i64,
        /// Available.
        balance: i64,
    },
    /// Closing an account that still holds money.
    #[error("cannot close an account with a balance of {0}")]
    NotEmpty(i64),
}

/// Open an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The owner.
    pub owner: String,
}

/// Put money in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deposit(pub i64);

/// Take money out; never more than the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Withdraw(pub i64);

/// Close an empty account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close;

impl Account {
    fn movement(&self, amount: i64) -> Result<(), AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        if amount <= 0 {
            return Err(AccountError::InvalidAmount);
        }
        Ok(())
    }
}

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
        self.movement(command.0)?;
        Ok(vec![AccountEvent::Deposited(Deposited {
            amount: command.0,
        })])
    }
}

impl Handle<Withdraw> for Account {
    type Error = AccountError;
    fn handle(&self, command: &Withdraw) -> Result<Vec<AccountEvent>, AccountError> {
        self.movement(command.0)?;
        if command.0 > self.balance {
            return Err(AccountError::InsufficientFunds {
                requested: command.0,
                balance: self.balance,
            });
        }
        Ok(vec![AccountEvent::Withdrawn(Withdrawn {
            amount: command.0,
        })])
    }
}

impl Handle<Close> for Account {
    type Error = AccountError;
    fn handle(&self, _: &Close) -> Result<Vec<AccountEvent>, AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        if self.balance != 0 {
            return Err(AccountError::NotEmpty(self.balance));
        }
        Ok(vec![AccountEvent::Closed])
    }
}
