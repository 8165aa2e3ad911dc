//! Event contracts: schema export, the compatibility rules `SchemaSet::verify` enforces, the
//! samples it decodes, and `index.json`. Each "release" below is a module holding the event
//! enum as one version of an application would ship it; a test verifies them in order against
//! one directory, as CI would on successive commits.

use std::fs;
use std::path::{Path, PathBuf};

use es_core::schema::{Difference, INDEX_FILE, Index, Problem, SchemaError, SchemaSet};
use es_examples::bank::Account;
use es_examples::catalog::Product;
use es_examples::order::Order;

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("es-schemas-{}", uuid::Uuid::new_v4()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap()
}

fn index(dir: &Path) -> Index {
    serde_json::from_str(&read(&dir.join(INDEX_FILE))).unwrap()
}

#[track_caller]
fn problems(result: Result<es_core::schema::VerifyReport, SchemaError>) -> Vec<Problem> {
    match result {
        Err(SchemaError::Incompatible { problems, .. }) => problems,
        other => panic!("expected incompatible contracts, got {other:?}"),
    }
}

/// The first release: prices as integer cents, a rename event, a nested type.
mod release_1 {
    use es_core::Event;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// The price changed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PriceChanged {
        /// The new price.
        pub(crate) price_cents: i64,
    }

    /// The product got a new name.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct Renamed {
        /// The new name.
        pub(crate) name: String,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        PriceChanged(PriceChanged),
        Renamed(Renamed),
        Discontinued,
    }
}

/// Release 1 with `PriceChanged` changed in place instead of bumped.
mod release_1_changed_in_place {
    use es_core::Event;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    pub(crate) use super::release_1::Renamed;

    /// The price changed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PriceChanged {
        /// The new price.
        pub(crate) price_cents: i64,
        /// ISO code.
        pub(crate) currency: String,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        PriceChanged(PriceChanged),
        Renamed(Renamed),
        Discontinued,
    }
}

/// The documented version bump: the old struct is kept as `PriceChangedV1`, the new one adds a
/// nested type, and an event type is added above the others.
mod release_2 {
    use es_core::Event;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    pub(crate) use super::release_1::Renamed;

    /// The price changed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PriceChangedV1 {
        /// The new price.
        pub(crate) price_cents: i64,
    }

    /// An amount in a currency.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct Money {
        /// Smallest unit.
        pub(crate) cents: i64,
        /// ISO code.
        pub(crate) currency: String,
    }

    /// The price changed (version 2: with its currency).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PriceChanged {
        /// The new price.
        pub(crate) price: Money,
    }

    impl From<PriceChangedV1> for PriceChanged {
        fn from(v1: PriceChangedV1) -> Self {
            PriceChanged {
                price: Money {
                    cents: v1.price_cents,
                    currency: "EUR".into(),
                },
            }
        }
    }

    /// A label was put on the product.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct Labelled {
        /// The label.
        pub(crate) label: Label,
    }

    /// A label.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct Label {
        /// Its text.
        pub(crate) text: String,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        Labelled(Labelled),
        #[event(version = 2, upcast(1 = PriceChangedV1))]
        PriceChanged(PriceChanged),
        Renamed(Renamed),
        Discontinued,
    }
}

/// A rename without an alias, and a removed event type.
mod release_3_breaking {
    use es_core::Event;

    pub(crate) use super::release_2::{Labelled, PriceChanged, PriceChangedV1, Renamed};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        Labelled(Labelled),
        #[event(version = 2, upcast(1 = PriceChangedV1))]
        PriceChanged(PriceChanged),
        ProductRenamed(Renamed),
    }
}

/// The same rename done right (with an alias), and the removal declared.
mod release_3 {
    use es_core::Event;

    pub(crate) use super::release_2::{Labelled, PriceChanged, PriceChangedV1, Renamed};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        Labelled(Labelled),
        #[event(version = 2, upcast(1 = PriceChangedV1))]
        PriceChanged(PriceChanged),
        #[event(aliases = ["Renamed"])]
        ProductRenamed(Renamed),
    }
}

/// Release 3 with its alias dropped and the bump to version 2 reverted after it was published.
mod release_4_breaking {
    use es_core::Event;

    pub(crate) use super::release_2::{Labelled, PriceChangedV1, Renamed};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        Labelled(Labelled),
        PriceChanged(PriceChangedV1),
        ProductRenamed(Renamed),
    }
}

/// Release 2 with an upcaster regression that no schema shows: version 1 now refuses a price of
/// zero, which its committed sample holds.
mod release_2_regressed {
    use es_core::Event;
    use schemars::JsonSchema;
    use serde::{Deserialize, Deserializer, Serialize};

    pub(crate) use super::release_2::{Labelled, Money, PriceChanged, Renamed};

    fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        let cents = i64::deserialize(deserializer)?;
        if cents > 0 {
            Ok(cents)
        } else {
            Err(serde::de::Error::custom("a price must be positive"))
        }
    }

    /// The price changed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PriceChangedV1 {
        /// The new price.
        #[serde(deserialize_with = "positive")]
        #[schemars(with = "i64")]
        pub(crate) price_cents: i64,
    }

    impl From<PriceChangedV1> for PriceChanged {
        fn from(v1: PriceChangedV1) -> Self {
            PriceChanged {
                price: Money {
                    cents: v1.price_cents,
                    currency: "EUR".into(),
                },
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    pub(crate) enum ProductEvent {
        Labelled(Labelled),
        #[event(version = 2, upcast(1 = PriceChangedV1))]
        PriceChanged(PriceChanged),
        Renamed(Renamed),
        Discontinued,
    }
}

/// A release's contracts, checked as CI does (without `ES_UPDATE_SCHEMAS`, whatever the
/// environment of the test run says).
fn release<E: es_core::Event>() -> SchemaSet {
    SchemaSet::new().events::<E>("product").updating(false)
}

/// The examples' committed contracts: verify passes on them as committed.
#[test]
fn committed_example_contracts_pass_the_check() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/schemas");
    let report = SchemaSet::new()
        .aggregate::<Order>()
        .aggregate::<Account>()
        .aggregate::<Product>()
        .verify(&dir)
        .unwrap();
    assert_eq!(report.added, Vec::<PathBuf>::new(), "{report}");
    assert!(
        report.added_types.is_empty() && report.added_versions.is_empty(),
        "{report}"
    );
}

#[test]
fn a_version_bump_keeps_version_1_byte_for_byte_and_reports_version_2_as_added() {
    let dir = scratch_dir();
    release::<release_1::ProductEvent>().verify(&dir).unwrap();
    let v1_before = read(&dir.join("product/PriceChanged.v1.json"));
    assert!(
        v1_before.contains("\"title\": \"PriceChanged v1\""),
        "{v1_before}"
    );

    let report = release::<release_2::ProductEvent>().verify(&dir).unwrap();
    assert_eq!(report.added_versions, ["product/PriceChanged v2"]);
    assert_eq!(report.added_types, ["product/Labelled"]);
    assert_eq!(read(&dir.join("product/PriceChanged.v1.json")), v1_before);
    let v2 = read_json(&dir.join("product/PriceChanged.v2.json"));
    assert_eq!(v2["title"], "PriceChanged v2");
    assert_eq!(
        v2["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(
        !v2.to_string().contains("PriceChangedV1"),
        "no Rust type name: {v2}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn changing_a_published_payload_in_place_is_an_error() {
    let dir = scratch_dir();
    release::<release_1::ProductEvent>().verify(&dir).unwrap();
    let error = release::<release_1_changed_in_place::ProductEvent>()
        .verify(&dir)
        .unwrap_err();
    let message = error.to_string();
    println!("{message}");
    let found = problems(Err(error));
    assert!(
        matches!(&found[..], [Problem::Changed { file, differences }, Problem::SampleDoesNotDecode { .. }] if file == "product/PriceChanged.v1.json" && differences.len() == 2),
        "{found:?}"
    );
    assert!(message.contains("\n  - sample `product/PriceChanged.v1.sample.json` no longer decodes: invalid payload for event `PriceChanged` version 1: missing field `currency` at line 3 column 1; "), "{message}");
    assert!(message.contains("\n  - `product/PriceChanged.v1.json` changed, but a published event version never changes: added `/properties/currency`, added `currency` to `/required`; bump the event's version and keep the old payload type as an upcast step (`#[event(version = N + 1, upcast(N = OldPayload))]`), or set ES_UPDATE_SCHEMAS=1 if the change is deliberate and compatible (a doc comment)\n"), "{message}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn each_schema_holds_only_the_definitions_it_uses() {
    let dir = scratch_dir();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    let defs = |file: &str| {
        let schema = read_json(&dir.join("product").join(file));
        let mut names: Vec<String> = schema
            .get("$defs")
            .and_then(|d| d.as_object())
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(defs("Labelled.v1.json"), ["Label"]);
    assert_eq!(defs("PriceChanged.v2.json"), ["Money"]);
    assert_eq!(defs("PriceChanged.v1.json"), Vec::<String>::new());
    assert_eq!(defs("Renamed.v1.json"), Vec::<String>::new());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn output_is_deterministic_and_a_second_check_writes_nothing() {
    let (a, b) = (scratch_dir(), scratch_dir());
    release::<release_2::ProductEvent>().export(&a).unwrap();
    release::<release_2::ProductEvent>().verify(&b).unwrap();
    let mut files: Vec<PathBuf> = fs::read_dir(a.join("product"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.push(a.join(INDEX_FILE));
    assert_eq!(files.len(), 11);
    for file in &files {
        let text = read(file);
        assert!(text.ends_with("}\n"), "{}", file.display());
        assert_eq!(
            text,
            read(&b.join(file.strip_prefix(&a).unwrap())),
            "{}",
            file.display()
        );
    }
    let again = release::<release_2::ProductEvent>().verify(&b).unwrap();
    assert!(
        again.added.is_empty() && again.updated.is_empty(),
        "{again}"
    );
    assert_eq!(again.unchanged.len(), 10);
    fs::remove_dir_all(a).unwrap();
    fs::remove_dir_all(b).unwrap();
}

#[test]
fn a_changed_published_schema_is_an_error_naming_the_file_and_the_json_pointers() {
    let dir = scratch_dir();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    let file = dir.join("product/PriceChanged.v1.json");
    let mut schema = read_json(&file);
    schema["properties"]["note"] = serde_json::json!({ "type": "string" });
    schema["properties"]["price_cents"]["type"] = "number".into();
    schema["required"] = serde_json::json!(["price_cents", "note"]);
    fs::write(&file, schema.to_string()).unwrap();

    let found = problems(release::<release_2::ProductEvent>().verify(&dir));
    assert_eq!(found.len(), 1, "{found:#?}");
    let Problem::Changed { file, differences } = &found[0] else {
        panic!("{found:?}")
    };
    assert_eq!(file, "product/PriceChanged.v1.json");
    assert_eq!(
        differences,
        &[
            Difference::Removed {
                pointer: "/properties/note".into()
            },
            Difference::Changed {
                pointer: "/properties/price_cents/type".into(),
                before: "\"number\"".into(),
                after: "\"integer\"".into()
            },
            Difference::RemovedFrom {
                pointer: "/required".into(),
                name: "note".into()
            },
        ]
    );
    let message = release::<release_2::ProductEvent>()
        .verify(&dir)
        .unwrap_err()
        .to_string();
    println!("{message}");
    assert!(message.contains("`product/PriceChanged.v1.json` changed, but a published event version never changes: removed `/properties/note`, changed `/properties/price_cents/type` from \"number\" to \"integer\", removed `note` from `/required`; bump the event's version"), "{message}");

    // A deliberate rewrite, as with ES_UPDATE_SCHEMAS=1.
    let report = release::<release_2::ProductEvent>()
        .updating(true)
        .verify(&dir)
        .unwrap();
    assert_eq!(report.updated, [dir.join("product/PriceChanged.v1.json")]);
    release::<release_2::ProductEvent>().verify(&dir).unwrap();

    // Formatting alone is not a change.
    fs::write(
        dir.join("product/PriceChanged.v1.json"),
        serde_json::to_string(
            release::<release_2::ProductEvent>()
                .get("PriceChanged", 1)
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn removing_a_type_or_renaming_it_without_an_alias_says_stored_events_would_stop_loading() {
    let dir = scratch_dir();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    let index_before = read(&dir.join(INDEX_FILE));

    let error = release::<release_3_breaking::ProductEvent>()
        .verify(&dir)
        .unwrap_err();
    let message = error.to_string();
    println!("{message}");
    let found = problems(Err(error));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        matches!(&found[0], Problem::TypeRemoved { event_type, added, .. } if event_type == "Discontinued" && added == &["ProductRenamed"])
    );
    assert!(
        matches!(&found[1], Problem::TypeRemoved { event_type, added, .. } if event_type == "Renamed" && added == &["ProductRenamed"])
    );
    assert!(message.contains("event type `Renamed` of `product` was published (versions 1) but the code no longer knows it: stored events of this type would stop loading with \"unknown event type `Renamed`\"; keep its variant, or if it was renamed add `aliases = [\"Renamed\"]` to the renamed variant (new here: `ProductRenamed`), or retire it deliberately with `SchemaSet::retire(\"product\", \"Renamed\", \"why\")`"), "{message}");
    assert_eq!(
        read(&dir.join(INDEX_FILE)),
        index_before,
        "a failed check leaves the index"
    );

    // The rename with an alias and the deliberate removal pass, and are recorded.
    let report = release::<release_3::ProductEvent>()
        .retire(
            "product",
            "Discontinued",
            "no product was ever discontinued in production",
        )
        .verify(&dir)
        .unwrap();
    assert_eq!(report.retired, ["product/Discontinued"]);
    assert_eq!(
        report.added_types,
        Vec::<String>::new(),
        "a rename is not a new type"
    );
    let index = index(&dir);
    assert_eq!(index.retired.len(), 1);
    assert_eq!(
        index.retired[0].reason,
        "no product was ever discontinued in production"
    );
    assert_eq!(
        index.retired[0].versions[0].schema,
        "product/Discontinued.v1.json"
    );
    // Later runs need not repeat the retirement: it is committed in index.json.
    release::<release_3::ProductEvent>().verify(&dir).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dropping_an_alias_or_a_published_version_is_an_error() {
    let dir = scratch_dir();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    release::<release_3::ProductEvent>()
        .retire("product", "Discontinued", "migrated")
        .verify(&dir)
        .unwrap();
    let error = release::<release_4_breaking::ProductEvent>()
        .verify(&dir)
        .unwrap_err();
    println!("{error}");
    let found = problems(Err(error));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        matches!(&found[0], Problem::VersionRemoved { event_type, version: 2, known, .. } if event_type == "PriceChanged" && known == &[1])
    );
    assert!(
        matches!(&found[1], Problem::AliasRemoved { alias, event_type, .. } if alias == "Renamed" && event_type == "ProductRenamed")
    );
    // Declared removals pass.
    release::<release_4_breaking::ProductEvent>()
        .retire("product", "Renamed", "rows rewritten to ProductRenamed")
        .retire_version("product", "PriceChanged", 2, "no version 2 row was written")
        .verify(&dir)
        .unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_sample_that_no_longer_decodes_fails_the_check() {
    let dir = scratch_dir();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    assert_eq!(
        read(&dir.join("product/PriceChanged.v1.sample.json")),
        "{\n  \"price_cents\": 0\n}\n"
    );
    let error = release::<release_2_regressed::ProductEvent>()
        .verify(&dir)
        .unwrap_err();
    println!("{error}");
    let found = problems(Err(error));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        matches!(&found[0], Problem::SampleDoesNotDecode { file, source: es_core::DecodeError::InvalidPayload { version: 1, .. } } if file == "product/PriceChanged.v1.sample.json"),
        "{found:?}"
    );
    assert!(found[0].to_string().starts_with("sample `product/PriceChanged.v1.sample.json` no longer decodes: invalid payload for event `PriceChanged` version 1: a price must be positive"), "{}", found[0]);

    // A committed sample is the user's: a hand-written one is kept and checked.
    fs::write(
        dir.join("product/PriceChanged.v1.sample.json"),
        r#"{"price_cents": 250}"#,
    )
    .unwrap();
    release::<release_2_regressed::ProductEvent>()
        .verify(&dir)
        .unwrap();
    assert_eq!(
        read(&dir.join("product/PriceChanged.v1.sample.json")),
        r#"{"price_cents": 250}"#
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_index_maps_names_aliases_and_versions_to_files() {
    let dir = scratch_dir();
    release::<release_2::ProductEvent>().verify(&dir).unwrap();
    release::<release_3::ProductEvent>()
        .retire("product", "Discontinued", "migrated")
        .verify(&dir)
        .unwrap();
    let index = index(&dir);
    let renamed = index
        .events
        .iter()
        .find(|e| e.event_type == "ProductRenamed")
        .unwrap();
    assert_eq!(
        (renamed.aliases.as_slice(), renamed.current_version),
        (&["Renamed".to_owned()][..], 1)
    );
    let price = index
        .events
        .iter()
        .find(|e| e.event_type == "PriceChanged")
        .unwrap();
    assert_eq!(price.current_version, 2);
    for (name, version, schema) in [
        ("Renamed", 1, "product/ProductRenamed.v1.json"),
        ("ProductRenamed", 1, "product/ProductRenamed.v1.json"),
        ("PriceChanged", 1, "product/PriceChanged.v1.json"),
        ("PriceChanged", 2, "product/PriceChanged.v2.json"),
        ("Discontinued", 1, "product/Discontinued.v1.json"),
    ] {
        let files = index.resolve("product", name, version).unwrap();
        assert_eq!(files.schema, schema, "{name} v{version}");
        assert!(dir.join(&files.schema).exists() && dir.join(&files.sample).exists());
    }
    assert!(index.resolve("product", "PriceChanged", 3).is_none());
    assert!(index.resolve("order", "PriceChanged", 1).is_none());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_index_of_the_earlier_flat_format_is_still_checked() {
    let dir = scratch_dir();
    release::<release_1::ProductEvent>().verify(&dir).unwrap();
    fs::write(
        dir.join(INDEX_FILE),
        r#"[{"aggregate": "product", "event_type": "Renamed", "version": 1, "current": true, "file": "product/Renamed.v1.json"}]"#,
    )
    .unwrap();
    let found = problems(release::<release_3_breaking::ProductEvent>().verify(&dir));
    assert!(
        matches!(&found[..], [Problem::TypeRemoved { event_type, .. }] if event_type == "Renamed"),
        "{found:?}"
    );
    fs::remove_dir_all(dir).unwrap();
}
