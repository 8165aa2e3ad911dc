//! What the derives cost at run time, next to hand-written code: the generated apply dispatch
//! against a hand-written `match`, decoding a current event against a v1 event through a
//! two-step upcast chain, and encoding.
//!
//! `cargo bench -p es-core --bench derive`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use es_core::{Aggregate, Apply, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Deposited {
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DepositedV1 {
    pub amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DepositedV2 {
    pub amount: i64,
    pub currency: Option<String>,
}

impl From<DepositedV1> for DepositedV2 {
    fn from(v1: DepositedV1) -> Self {
        DepositedV2 {
            amount: v1.amount,
            currency: None,
        }
    }
}

impl From<DepositedV2> for Deposited {
    fn from(v2: DepositedV2) -> Self {
        Deposited {
            amount: v2.amount,
            currency: v2.currency.unwrap_or_else(|| "EUR".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Withdrawn {
    pub amount: i64,
}

#[derive(Debug, Clone, Event)]
pub enum AccountEvent {
    Opened(Opened),
    #[event(version = 3, upcast(1 = DepositedV1, 2 = DepositedV2))]
    Deposited(Deposited),
    Withdrawn(Withdrawn),
    Frozen,
    Closed,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent)]
pub struct Account {
    open: bool,
    frozen: bool,
    balance: i64,
    movements: u64,
}

impl Apply<Opened> for Account {
    #[inline]
    fn apply(&mut self, _: &Opened) {
        self.open = true;
    }
}

impl Apply<Deposited> for Account {
    #[inline]
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
        self.movements += 1;
    }
}

impl Apply<Withdrawn> for Account {
    #[inline]
    fn apply(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
        self.movements += 1;
    }
}

impl Apply<account_event::Frozen> for Account {
    #[inline]
    fn apply(&mut self, _: &account_event::Frozen) {
        self.frozen = true;
    }
}

impl Apply<account_event::Closed> for Account {
    #[inline]
    fn apply(&mut self, _: &account_event::Closed) {
        self.open = false;
    }
}

/// The `match` a person would write instead of the derive.
#[inline]
fn hand_written_apply(account: &mut Account, event: &AccountEvent) {
    match event {
        AccountEvent::Opened(_) => account.open = true,
        AccountEvent::Deposited(e) => {
            account.balance += e.amount;
            account.movements += 1;
        }
        AccountEvent::Withdrawn(e) => {
            account.balance -= e.amount;
            account.movements += 1;
        }
        AccountEvent::Frozen => account.frozen = true,
        AccountEvent::Closed => account.open = false,
    }
}

fn history() -> Vec<AccountEvent> {
    let mut events = vec![AccountEvent::Opened(Opened {
        owner: "ann".into(),
    })];
    for i in 0..1_000 {
        events.push(match i % 4 {
            0 | 1 => AccountEvent::Deposited(Deposited {
                amount: i,
                currency: "EUR".into(),
            }),
            2 => AccountEvent::Withdrawn(Withdrawn { amount: i / 2 }),
            _ => AccountEvent::Frozen,
        });
    }
    events.push(AccountEvent::Closed);
    events
}

fn dispatch(c: &mut Criterion) {
    let events = history();
    let mut group = c.benchmark_group("apply 1,002 events");
    group.bench_function("generated dispatch", |b| {
        b.iter(|| {
            let mut account = Account::default();
            for event in black_box(&events) {
                account.apply_event(event);
            }
            black_box(account.balance)
        })
    });
    group.bench_function("hand-written match", |b| {
        b.iter(|| {
            let mut account = Account::default();
            for event in black_box(&events) {
                hand_written_apply(&mut account, event);
            }
            black_box(account.balance)
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let current = r#"{"amount":1250,"currency":"EUR"}"#;
    let v1 = r#"{"amount":1250}"#;
    let mut group = c.benchmark_group("decode Deposited");
    group.bench_function("current version (v3)", |b| {
        b.iter(|| {
            AccountEvent::decode(black_box("Deposited"), black_box(3), black_box(current)).unwrap()
        })
    });
    group.bench_function("v1 through two upcast steps", |b| {
        b.iter(|| {
            AccountEvent::decode(black_box("Deposited"), black_box(1), black_box(v1)).unwrap()
        })
    });
    group.bench_function("plain serde_json of the current payload", |b| {
        b.iter(|| serde_json::from_str::<Deposited>(black_box(current)).unwrap())
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let event = AccountEvent::Deposited(Deposited {
        amount: 1_250,
        currency: "EUR".into(),
    });
    let mut group = c.benchmark_group("encode Deposited");
    group.bench_function("Event::encode", |b| {
        b.iter(|| black_box(&event).encode().unwrap())
    });
    let AccountEvent::Deposited(payload) = &event else {
        unreachable!()
    };
    group.bench_function("RawJson::encode of the payload", |b| {
        b.iter(|| es_core::RawJson::encode(black_box(payload)).unwrap())
    });
    group.bench_function("plain serde_json::to_string", |b| {
        b.iter(|| serde_json::to_string(black_box(payload)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, dispatch, decode, encode);
criterion_main!(benches);
