//! What `#[derive(Event)]` generates, at run time: stored names and versions, payloads without
//! an enum tag, aliases, a two-step upcast chain, data-less events, schemas of every version,
//! and a distinct typed error for every kind of bad stored event.

use es_core::testing::assert_round_trip;
use es_core::{DecodeError, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version 3: the price carries its currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PriceSet {
    pub cents: i64,
    pub currency: String,
}

/// Version 1: a price as a float of euros.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PriceSetV1 {
    pub euros: f64,
}

/// Version 2: integer cents, currency implied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PriceSetV2 {
    pub cents: i64,
}

impl From<PriceSetV1> for PriceSetV2 {
    fn from(v1: PriceSetV1) -> Self {
        PriceSetV2 {
            cents: (v1.euros * 100.0).round() as i64,
        }
    }
}

fn in_euros(v2: PriceSetV2) -> PriceSet {
    PriceSet {
        cents: v2.cents,
        currency: "EUR".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Renamed {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum ProductEvent {
    #[event(version = 3, upcast(1 = PriceSetV1, 2 = PriceSetV2 with in_euros))]
    PriceSet(PriceSet),
    #[event(name = "ProductRenamed", aliases = ["NameChanged", "Retitled"])]
    Renamed(Renamed),
    Discontinued,
}

#[test]
fn types_list_names_aliases_and_versions_in_declaration_order() {
    let types: Vec<(&str, &[&str], u32)> = ProductEvent::TYPES
        .iter()
        .map(|t| (t.name, t.aliases, t.version))
        .collect();
    assert_eq!(
        types,
        [
            ("PriceSet", &[][..], 3),
            ("ProductRenamed", &["NameChanged", "Retitled"][..], 1),
            ("Discontinued", &[][..], 1),
        ]
    );
    assert!(ProductEvent::knows("Retitled") && ProductEvent::knows("Discontinued"));
    assert!(
        !ProductEvent::knows("Renamed"),
        "the variant name is not stored once `name` overrides it"
    );
}

#[test]
fn the_payload_is_stored_as_the_struct_s_own_json_without_a_tag() {
    let event = ProductEvent::PriceSet(PriceSet {
        cents: 1_250,
        currency: "JPY".into(),
    });
    assert_eq!(
        (event.event_type(), event.schema_version()),
        ("PriceSet", 3)
    );
    assert_eq!(
        event.encode().unwrap().as_str(),
        r#"{"cents":1250,"currency":"JPY"}"#
    );
    assert_eq!(ProductEvent::Discontinued.encode().unwrap().as_str(), "{}");
    for event in [
        event,
        ProductEvent::Renamed(Renamed { name: "Tea".into() }),
        ProductEvent::Discontinued,
    ] {
        assert_round_trip(&event);
    }
}

#[test]
fn older_versions_upcast_step_by_step() {
    let v1 = ProductEvent::decode("PriceSet", 1, r#"{"euros": 12.5}"#).unwrap();
    let v2 = ProductEvent::decode("PriceSet", 2, r#"{"cents": 1250}"#).unwrap();
    let expected = ProductEvent::PriceSet(PriceSet {
        cents: 1_250,
        currency: "EUR".into(),
    });
    assert_eq!((v1, v2), (expected.clone(), expected));
}

#[test]
fn aliases_decode_as_the_renamed_event() {
    for name in ["ProductRenamed", "NameChanged", "Retitled"] {
        let event = ProductEvent::decode(name, 1, r#"{"name": "Tea"}"#).unwrap();
        assert_eq!(
            event,
            ProductEvent::Renamed(Renamed { name: "Tea".into() }),
            "{name}"
        );
    }
}

#[test]
fn data_less_events_accept_an_empty_object_or_null_and_ignore_added_fields() {
    for payload in ["{}", "null", r#"{"reason": "added by a newer writer"}"#] {
        assert_eq!(
            ProductEvent::decode("Discontinued", 1, payload).unwrap(),
            ProductEvent::Discontinued
        );
    }
    let error = ProductEvent::decode("Discontinued", 1, "{not json").unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidPayload { version: 1, .. }),
        "{error:?}"
    );
}

#[test]
fn every_kind_of_bad_stored_event_is_a_distinct_typed_error() {
    let unknown = ProductEvent::decode("Renamed", 1, "{}").unwrap_err();
    assert!(matches!(&unknown, DecodeError::UnknownType { event_type } if event_type == "Renamed"));
    assert_eq!(unknown.to_string(), "unknown event type `Renamed`");

    let newer = ProductEvent::decode("PriceSet", 4, r#"{"cents": 1}"#).unwrap_err();
    assert!(
        matches!(
            newer,
            DecodeError::NewerVersion {
                version: 4,
                current: 3,
                ..
            }
        ),
        "{newer:?}"
    );
    assert_eq!(
        newer.to_string(),
        "event `PriceSet` has schema version 4, newer than version 3 that this code knows"
    );

    let no_path = ProductEvent::decode("PriceSet", 0, "{}").unwrap_err();
    assert!(
        matches!(no_path, DecodeError::NoUpcastPath { version: 0, .. }),
        "{no_path:?}"
    );

    let newer_unit = ProductEvent::decode("Discontinued", 2, "{}").unwrap_err();
    assert!(matches!(
        newer_unit,
        DecodeError::NewerVersion {
            version: 2,
            current: 1,
            ..
        }
    ));

    // A corrupt payload at an old version names that version, not the current one.
    let corrupt = ProductEvent::decode("PriceSet", 1, r#"{"euros": "twelve"}"#).unwrap_err();
    assert!(
        matches!(&corrupt, DecodeError::InvalidPayload { event_type, version: 1, .. } if event_type == "PriceSet")
    );
    assert!(
        corrupt
            .to_string()
            .starts_with("invalid payload for event `PriceSet` version 1: "),
        "{corrupt}"
    );
    let not_json = ProductEvent::decode("ProductRenamed", 1, "").unwrap_err();
    assert!(matches!(not_json, DecodeError::InvalidPayload { .. }));
}

#[test]
fn schemas_cover_every_version_of_every_event_each_on_its_own() {
    let schemas = ProductEvent::schemas();
    let versions: Vec<(&str, u32)> = schemas.iter().map(|s| (s.event_type, s.version)).collect();
    assert_eq!(
        versions,
        [
            ("PriceSet", 1),
            ("PriceSet", 2),
            ("PriceSet", 3),
            ("ProductRenamed", 1),
            ("Discontinued", 1)
        ]
    );
    let schema = |event_type: &str, version: u32| {
        schemas
            .iter()
            .find(|s| s.event_type == event_type && s.version == version)
            .unwrap()
            .schema
            .as_value()
    };
    let properties = |version: u32| {
        let mut keys: Vec<String> = schema("PriceSet", version)["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(properties(1), ["euros"]);
    assert_eq!(properties(2), ["cents"]);
    assert_eq!(properties(3), ["cents", "currency"]);
    for (event_type, version, title) in [
        ("PriceSet", 1, "PriceSet v1"),
        ("ProductRenamed", 1, "ProductRenamed v1"),
        ("Discontinued", 1, "Discontinued v1"),
    ] {
        let schema = schema(event_type, version);
        assert_eq!(schema["title"], title);
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }
}

#[test]
fn an_event_holding_nan_or_infinity_is_refused_before_it_is_written() {
    for euros in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        #[derive(Debug, Clone, PartialEq, Event)]
        enum Measured {
            Price(PriceSetV1),
            Reading { celsius: Vec<f64> },
        }
        let error = Measured::Price(PriceSetV1 { euros }).encode().unwrap_err();
        assert!(
            error.to_string().starts_with("cannot encode ")
                && error
                    .to_string()
                    .contains(" at `/euros`: JSON has no NaN or infinity"),
            "{error}"
        );
        let error = Measured::Reading {
            celsius: vec![1.0, euros],
        }
        .encode()
        .unwrap_err();
        assert!(error.to_string().contains(" at `/celsius/1`: "), "{error}");
    }
}
