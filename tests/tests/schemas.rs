//! Schema export and the compatibility check (P5).

use std::fs;
use std::path::{Path, PathBuf};

use es_core::schema::{IndexEntry, SchemaError, SchemaSet};
use es_examples::bank::Account;
use es_examples::catalog::Product;
use es_examples::order::Order;

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("es-schemas-{}", uuid::Uuid::new_v4()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The examples' committed schemas: fails when an exported version's schema changed.
#[test]
fn committed_example_schemas_are_unchanged() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/schemas");
    SchemaSet::new()
        .aggregate::<Order>()
        .aggregate::<Account>()
        .aggregate::<Product>()
        .verify(dir)
        .unwrap();
}

#[test]
fn export_writes_every_type_and_version_with_an_index() {
    let dir = scratch_dir();
    let written = SchemaSet::new().aggregate::<Order>().export(&dir).unwrap();
    let mut names: Vec<String> = written
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "order/InventoryReserved.v1.json",
            "order/OrderCancelled.v1.json",
            "order/OrderConfirmed.v1.json",
            "order/OrderCreated.v1.json",
            "order/OrderCreated.v2.json",
            "order/PaymentProcessed.v1.json",
        ]
    );
    let v1 = read_json(&dir.join("order/OrderCreated.v1.json"));
    let v2 = read_json(&dir.join("order/OrderCreated.v2.json"));
    assert!(
        v1["properties"].get("total_amount").is_none(),
        "v1 has no total"
    );
    assert!(
        v2["properties"].get("total_amount").is_some(),
        "v2 has the total"
    );
    let index: Vec<IndexEntry> =
        serde_json::from_value(read_json(&dir.join("index.json"))).unwrap();
    let mut created: Vec<(u32, bool)> = index
        .iter()
        .filter(|e| e.event_type == "OrderCreated")
        .map(|e| (e.version, e.current))
        .collect();
    created.sort();
    assert_eq!(created, [(1, false), (2, true)]);
    assert!(
        index
            .iter()
            .all(|e| e.aggregate == "order" && dir.join(&e.file).exists())
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn verify_fails_listing_changed_files_and_accepts_new_versions() {
    let dir = scratch_dir();
    let schemas = SchemaSet::new().aggregate::<Order>();
    schemas.export(&dir).unwrap();

    // A new event version (or type) is fine: a missing file is written.
    fs::remove_file(dir.join("order/OrderCreated.v2.json")).unwrap();
    let report = schemas.verify(&dir).unwrap();
    assert_eq!(report.added, [dir.join("order/OrderCreated.v2.json")]);
    assert_eq!(report.unchanged.len(), 5);

    // A committed schema of an existing version that changed is an error naming the file.
    let changed = dir.join("order/PaymentProcessed.v1.json");
    let mut schema = read_json(&changed);
    schema["properties"]["currency"] = serde_json::json!({ "type": "string" });
    fs::write(&changed, schema.to_string()).unwrap();
    match schemas.verify(&dir) {
        Err(SchemaError::Changed { files }) => assert_eq!(files, std::slice::from_ref(&changed)),
        other => panic!("expected a changed-schema error, got {other:?}"),
    }
    let message = schemas.verify(&dir).unwrap_err().to_string();
    assert!(
        message.contains("PaymentProcessed.v1.json")
            && message.contains("bump the event's version"),
        "{message}"
    );

    // Formatting alone is not a change.
    fs::write(
        &changed,
        serde_json::to_string(&schemas.get("PaymentProcessed", 1).unwrap()).unwrap(),
    )
    .unwrap();
    assert!(schemas.verify(&dir).is_ok());
    fs::remove_dir_all(dir).unwrap();
}
