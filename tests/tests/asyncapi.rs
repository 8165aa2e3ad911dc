//! The AsyncAPI document of the examples, validated by the reference parser
//! (`@asyncapi/parser`, run with Node.js), and kept committed beside the schemas.

use std::path::{Path, PathBuf};
use std::process::Command;

use es_core::asyncapi::Service;
use es_core::integration::{headers, subject};
use es_core::schema::SchemaSet;
use es_examples::bank::Account;
use es_examples::catalog::Product;
use es_examples::order::Order;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> SchemaSet {
    SchemaSet::new()
        .aggregate::<Order>()
        .aggregate::<Account>()
        .aggregate::<Product>()
}

fn service() -> Service {
    Service::new("es examples", "0.1.0")
        .with_description("The events of the order, bank account and product catalog examples.")
}

/// Runs the reference parser on `document`; the parser's output, or why it failed.
fn parse_with_reference_parser(document: &Path) -> Result<String, String> {
    let tools = std::env::var_os("ES_CONTRACTS_NODE")
        .map_or_else(|| workspace().join("target/contracts/node"), PathBuf::from);
    let output = Command::new("node")
        .arg(workspace().join("contracts/asyncapi-validate.cjs"))
        .arg(document)
        .arg(&tools)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run `node` ({error}): the AsyncAPI check needs Node.js 18 or later and @asyncapi/parser; install Node.js, then run `bash contracts/setup.sh`"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => Ok(text),
        Some(3) => panic!("{text}"),
        _ => Err(text),
    }
}

#[test]
fn the_examples_document_is_valid_for_the_reference_parser() {
    let path = std::env::temp_dir().join(format!("es-asyncapi-{}.json", uuid::Uuid::new_v4()));
    service().write(&examples(), &path).unwrap();
    let output = parse_with_reference_parser(&path).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(&path).unwrap();
    assert!(!output.contains("error "), "{output}");
    let channels: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("channel "))
        .collect();
    assert_eq!(channels.len(), 12, "{output}");
    assert!(
        channels.contains(&"channel es.order.OrderCreated OrderCreated@v1 OrderCreated@v2"),
        "{output}"
    );
}

#[test]
fn the_reference_parser_rejects_a_broken_document() {
    let path = std::env::temp_dir().join(format!("es-asyncapi-{}.json", uuid::Uuid::new_v4()));
    let mut document = service().document(&examples());
    document["channels"]["order__OrderCreated"]["messages"]["v1"]["$ref"] =
        "#/components/messages/missing".into();
    document["info"].as_object_mut().unwrap().remove("version");
    std::fs::write(&path, document.to_string()).unwrap();
    let output = parse_with_reference_parser(&path).expect_err("the document is broken");
    std::fs::remove_file(&path).unwrap();
    assert!(output.contains("error "), "{output}");
}

#[test]
fn channels_and_messages_use_the_shared_subject_and_headers() {
    let document = service().document(&examples());
    let channel = &document["channels"]["order__OrderCreated"];
    assert_eq!(channel["address"], subject("es", "order", "OrderCreated"));
    let message = &document["components"]["messages"]["order__OrderCreated__v1"];
    assert_eq!(message["title"], "OrderCreated v1");
    // The payload's nested types moved to components, references following them.
    assert_eq!(
        message["payload"]["properties"]["shipping_address"]["$ref"],
        "#/components/schemas/order__OrderCreated__v1__Address"
    );
    assert!(message["payload"].get("$schema").is_none());
    let header_names: Vec<&String> = document["components"]["schemas"]["EsHeaders"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let mut expected: Vec<&str> = headers::ALL.to_vec();
    expected.sort_unstable();
    assert_eq!(header_names, expected);
}

/// `examples/asyncapi.json` is what the code generates; refresh with `ES_UPDATE_SCHEMAS=1`.
#[test]
fn the_committed_document_is_current() {
    let path = workspace().join("examples/asyncapi.json");
    let generated = {
        let scratch =
            std::env::temp_dir().join(format!("es-asyncapi-{}.json", uuid::Uuid::new_v4()));
        service().write(&examples(), &scratch).unwrap();
        let text = std::fs::read_to_string(&scratch).unwrap();
        std::fs::remove_file(scratch).unwrap();
        text
    };
    if std::env::var(es_core::schema::UPDATE_ENV).is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "examples/asyncapi.json is not what the code generates; run `ES_UPDATE_SCHEMAS=1 cargo test -p es-tests --test asyncapi` and review the diff"
    );
}
