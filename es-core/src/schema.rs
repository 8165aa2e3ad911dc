//! JSON Schemas of events (P5): export every event type at every version to a directory, and
//! check that a schema already exported never changes.
//!
//! In a test of the crate that owns the events, two lines keep the committed schemas honest:
//!
//! ```no_run
//! # use es_core::{Aggregate, Apply, Event};
//! # #[derive(Event)] pub enum OrderEvent { Placed }
//! # #[derive(Default, Aggregate)] #[aggregate(name = "order", event = OrderEvent)] pub struct Order;
//! # impl Apply<order_event::Placed> for Order { fn apply(&mut self, _: &order_event::Placed) {} }
//! let schemas = es_core::schema::SchemaSet::new().aggregate::<Order>();
//! schemas.verify("schemas").unwrap();
//! ```
//!
//! [`SchemaSet::verify`] fails, naming the files, when a committed `(type, version)` schema
//! differs from what the code generates now (the payload changed without a version bump), and
//! writes the schemas of new types and versions. Set `ES_UPDATE_SCHEMAS=1` to overwrite
//! deliberately.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::event::Event;

/// Setting this environment variable to `1` makes [`SchemaSet::verify`] overwrite changed schemas.
pub const UPDATE_ENV: &str = "ES_UPDATE_SCHEMAS";

/// The name of the index file written beside the schemas.
pub const INDEX_FILE: &str = "index.json";

/// One line of the index: which file holds which event type at which version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The aggregate (stream type) the event belongs to.
    pub aggregate: String,
    /// The event type's stable name.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// Whether this is the version the code writes today.
    pub current: bool,
    /// The schema file, relative to the export directory.
    pub file: String,
}

/// The schemas of a set of event enums.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    entries: Vec<(IndexEntry, schemars::Schema)>,
}

/// A schema export or check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Committed schemas of existing versions differ from the code's.
    #[error("{}", describe_changed(.files))]
    Changed {
        /// The files whose schema changed.
        files: Vec<PathBuf>,
    },
    /// A file could not be read or written.
    #[error("failed to {action} `{}`: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A committed file is not JSON.
    #[error("`{}` is not valid JSON: {source}", .path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

fn describe_changed(files: &[PathBuf]) -> String {
    let mut text = String::from(
        "the schema of an already exported event version changed; bump the event's version (keeping the old payload type as an upcast step) instead of changing it in place, or set ES_UPDATE_SCHEMAS=1 if the change is deliberate and compatible. Changed files:",
    );
    for file in files {
        text.push_str("\n  ");
        text.push_str(&file.display().to_string());
    }
    text
}

/// What [`SchemaSet::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Schemas that were already exported and are unchanged.
    pub unchanged: Vec<PathBuf>,
    /// Schemas exported now for the first time (new event types or versions).
    pub added: Vec<PathBuf>,
    /// Schemas overwritten because `ES_UPDATE_SCHEMAS=1`.
    pub updated: Vec<PathBuf>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unchanged, {} added, {} updated",
            self.unchanged.len(),
            self.added.len(),
            self.updated.len()
        )
    }
}

impl SchemaSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the events of aggregate `A`, filed under its name.
    pub fn aggregate<A: Aggregate>(self) -> Self {
        self.events::<A::Event>(A::NAME)
    }

    /// Adds the events of `E`, filed under `owner` (an aggregate name or any folder name).
    pub fn events<E: Event>(mut self, owner: &str) -> Self {
        let mut generator = schemars::SchemaGenerator::default();
        for schema in E::schemas(&mut generator) {
            let current = E::TYPES
                .iter()
                .any(|t| t.name == schema.event_type && t.version == schema.version);
            let entry = IndexEntry {
                aggregate: owner.to_owned(),
                event_type: schema.event_type.to_owned(),
                version: schema.version,
                current,
                file: format!("{owner}/{}.v{}.json", schema.event_type, schema.version),
            };
            self.entries.push((entry, schema.schema));
        }
        self
    }

    /// The index: one entry per event type and version.
    pub fn index(&self) -> Vec<IndexEntry> {
        self.entries
            .iter()
            .map(|(entry, _)| entry.clone())
            .collect()
    }

    /// The schema of `event_type` at `version`.
    pub fn get(&self, event_type: &str, version: u32) -> Option<&schemars::Schema> {
        self.entries
            .iter()
            .find(|(entry, _)| entry.event_type == event_type && entry.version == version)
            .map(|(_, schema)| schema)
    }

    /// Writes every schema and the index into `dir`, overwriting what is there.
    pub fn export(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, SchemaError> {
        let dir = dir.as_ref();
        let mut written = Vec::with_capacity(self.entries.len());
        for (entry, schema) in &self.entries {
            let path = dir.join(&entry.file);
            write_json(&path, schema)?;
            written.push(path);
        }
        write_json(&dir.join(INDEX_FILE), &self.index())?;
        Ok(written)
    }

    /// Compares every schema with the one committed in `dir`: fails listing the files whose
    /// schema changed, writes new ones and the index. With `ES_UPDATE_SCHEMAS=1`, overwrites
    /// changed files instead of failing.
    pub fn verify(&self, dir: impl AsRef<Path>) -> Result<VerifyReport, SchemaError> {
        let update = std::env::var(UPDATE_ENV).is_ok_and(|value| value == "1");
        let dir = dir.as_ref();
        let mut report = VerifyReport::default();
        let mut changed = Vec::new();
        for (entry, schema) in &self.entries {
            let path = dir.join(&entry.file);
            let generated =
                serde_json::to_value(schema).map_err(|source| SchemaError::InvalidFile {
                    path: path.clone(),
                    source,
                })?;
            match read_json(&path)? {
                None => {
                    write_json(&path, &generated)?;
                    report.added.push(path);
                }
                Some(committed) if committed == generated => report.unchanged.push(path),
                Some(_) if update => {
                    write_json(&path, &generated)?;
                    report.updated.push(path);
                }
                Some(_) => changed.push(path),
            }
        }
        if !changed.is_empty() {
            return Err(SchemaError::Changed { files: changed });
        }
        write_json(&dir.join(INDEX_FILE), &self.index())?;
        Ok(report)
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, SchemaError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|source| SchemaError::InvalidFile {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SchemaError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), SchemaError> {
    let io_error = |action, source| SchemaError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| io_error("create the directory of", source))?;
    }
    let mut text =
        serde_json::to_string_pretty(value).map_err(|source| SchemaError::InvalidFile {
            path: path.to_owned(),
            source,
        })?;
    text.push('\n');
    fs::write(path, text).map_err(|source| io_error("write", source))
}
