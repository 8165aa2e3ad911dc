//! Struct-like event variants: `Deposited { amount: i64 }` gets a payload struct generated in
//! the enum's module (`account_event::Deposited`), used for `Apply`, encoding, decoding,
//! upcasting and schemas exactly as a newtype variant's own payload type.

use es_core::schema::SchemaSet;
use es_core::testing::assert_round_trip;
use es_core::{Aggregate, Apply, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version 1 of `Deposited`: whole euros.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DepositedV1 {
    /// Euros.
    pub euros: i64,
}

impl From<DepositedV1> for account_event::Deposited {
    fn from(v1: DepositedV1) -> Self {
        account_event::Deposited {
            amount_cents: v1.euros * 100,
            memo: None,
            currency: "EUR".into(),
        }
    }
}

/// A label; a nested type of a struct variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Label {
    /// Its text.
    pub text: String,
}

/// An account's events.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum AccountEvent {
    /// The account was opened.
    Opened,
    /// Money came in.
    #[event(version = 2, upcast(1 = DepositedV1))]
    #[serde(deny_unknown_fields)]
    Deposited {
        /// In cents.
        #[serde(rename = "amountCents")]
        amount_cents: i64,
        /// A note from the payer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memo: Option<String>,
        /// ISO code.
        currency: String,
    },
    /// A label was put on the account.
    #[event(name = "AccountLabelled", aliases = ["Labelled"], derive(PartialEq, Eq, Hash))]
    Labelled {
        /// The label.
        label: Label,
    },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent)]
pub struct Account {
    open: bool,
    balance: i64,
    labels: Vec<String>,
}

impl Apply<account_event::Opened> for Account {
    fn apply(&mut self, _: &account_event::Opened) {
        self.open = true;
    }
}

impl Apply<account_event::Deposited> for Account {
    fn apply(&mut self, event: &account_event::Deposited) {
        self.balance += event.amount_cents;
    }
}

impl Apply<account_event::Labelled> for Account {
    fn apply(&mut self, event: &account_event::Labelled) {
        self.labels.push(event.label.text.clone());
    }
}

fn deposited(amount_cents: i64) -> AccountEvent {
    AccountEvent::Deposited {
        amount_cents,
        memo: None,
        currency: "EUR".into(),
    }
}

#[test]
fn the_payload_is_the_fields_as_json_with_their_serde_attributes() {
    let event = deposited(250);
    assert_eq!(
        (event.event_type(), event.schema_version()),
        ("Deposited", 2)
    );
    assert_eq!(
        event.encode().unwrap().as_str(),
        r#"{"amountCents":250,"currency":"EUR"}"#
    );
    for event in [
        AccountEvent::Opened,
        deposited(1),
        AccountEvent::Deposited {
            amount_cents: 5,
            memo: Some("rent".into()),
            currency: "JPY".into(),
        },
        AccountEvent::Labelled {
            label: Label { text: "vip".into() },
        },
    ] {
        assert_round_trip(&event);
    }
    let refused = AccountEvent::decode(
        "Deposited",
        2,
        r#"{"amountCents": 1, "currency": "EUR", "extra": 1}"#,
    );
    assert!(
        refused.is_err(),
        "the variant's deny_unknown_fields applies"
    );
}

#[test]
fn older_versions_and_aliases_decode_into_the_variant() {
    assert_eq!(
        AccountEvent::decode("Deposited", 1, r#"{"euros": 3}"#).unwrap(),
        deposited(300)
    );
    assert_eq!(
        AccountEvent::decode("Labelled", 1, r#"{"label": {"text": "vip"}}"#).unwrap(),
        AccountEvent::Labelled {
            label: Label { text: "vip".into() }
        }
    );
}

#[test]
fn the_aggregate_applies_the_generated_payload_types() {
    let mut account = Account::default();
    for event in [
        AccountEvent::Opened,
        deposited(100),
        deposited(50),
        AccountEvent::Labelled {
            label: Label { text: "vip".into() },
        },
    ] {
        account.apply_event(&event);
    }
    assert!(account.open);
    assert_eq!(
        (account.balance, account.labels.as_slice()),
        (150, &["vip".to_owned()][..])
    );
}

#[test]
fn the_generated_struct_has_the_derives_and_the_docs() {
    use std::collections::HashSet;

    let labels: HashSet<account_event::Labelled> = [account_event::Labelled {
        label: Label { text: "a".into() },
    }]
    .into();
    assert_eq!(labels.len(), 1);

    let schemas = SchemaSet::new().aggregate::<Account>();
    let v2 = schemas.get("Deposited", 2).unwrap().as_value();
    assert_eq!(v2["title"], "Deposited v2");
    assert_eq!(v2["description"], "Money came in.");
    assert_eq!(v2["properties"]["amountCents"]["description"], "In cents.");
    assert_eq!(v2["additionalProperties"], false);
    let mut required: Vec<&str> = v2["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["amountCents", "currency"]);
    let v1 = schemas.get("Deposited", 1).unwrap().as_value();
    assert_eq!(v1["title"], "Deposited v1");
    let labelled = schemas.get("Labelled", 1).unwrap().as_value();
    assert_eq!(
        labelled["$defs"]["Label"]["properties"]["text"]["type"],
        "string"
    );
}

#[test]
fn samples_of_struct_variants_decode() {
    let dir = std::env::temp_dir().join(format!("es-struct-variants-{}", uuid::Uuid::new_v4()));
    let report = SchemaSet::new()
        .aggregate::<Account>()
        .updating(false)
        .verify(&dir)
        .unwrap();
    assert_eq!(
        report.added_types,
        [
            "account/AccountLabelled",
            "account/Deposited",
            "account/Opened"
        ]
    );
    let sample = std::fs::read_to_string(dir.join("account/Deposited.v2.sample.json")).unwrap();
    assert_eq!(
        AccountEvent::decode("Deposited", 2, &sample).unwrap(),
        AccountEvent::Deposited {
            amount_cents: 0,
            memo: Some(String::new()),
            currency: String::new()
        }
    );
    std::fs::remove_dir_all(dir).unwrap();
}
