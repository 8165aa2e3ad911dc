//! The consumer in another language (`contracts/consumer.py`, Python with `jsonschema`) reads
//! the examples' contracts through `index.json` alone and validates every committed sample; it
//! fails on a payload that breaks its schema. CI also runs it on the events the examples store
//! in SQLite and PostgreSQL (see `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn consumer(schemas: &Path) -> Output {
    let python = std::env::var_os("ES_CONTRACTS_PYTHON").map_or_else(
        || workspace().join("target/contracts/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: the consumer check needs Python 3 with jsonschema and psycopg; run `bash contracts/setup.sh` (or set ES_CONTRACTS_PYTHON)",
        python.display()
    );
    Command::new(&python)
        .arg(workspace().join("contracts/consumer.py"))
        .arg("--schemas")
        .arg(schemas)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn every_committed_sample_matches_its_schema_for_a_python_consumer() {
    let output = consumer(&workspace().join("examples/schemas"));
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("sample: 14 events checked"), "{text}");
    assert!(text.contains("self-check: a wrong "), "{text}");
}

#[test]
fn the_python_consumer_rejects_a_payload_that_breaks_its_schema() {
    let dir = std::env::temp_dir().join(format!("es-consumer-{}", uuid::Uuid::new_v4()));
    copy_dir(&workspace().join("examples/schemas"), &dir);
    std::fs::write(
        dir.join("order/OrderConfirmed.v1.sample.json"),
        r#"{"confirmed_at": 20240101}"#,
    )
    .unwrap();
    let output = consumer(&dir);
    let text = text(&output);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL sample: order/OrderConfirmed v1: order/OrderConfirmed.v1.json: at /confirmed_at: 20240101 is not of type 'string'"),
        "{text}"
    );
}
