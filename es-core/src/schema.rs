//! Event contracts: the JSON Schema of every event type at every version, a sample payload of
//! each, an index that maps any stored row to them, and the compatibility check a schema
//! registry would run, so that what is stored keeps loading and consumers in any language can
//! trust the files.
//!
//! In a test of the crate that owns the events, one call keeps the committed contracts honest:
//!
//! ```
//! use es_core::schema::SchemaSet;
//! # use es_core::{Aggregate, Apply, Event};
//! #[derive(Debug, Clone, PartialEq, Event)]
//! pub enum AccountEvent {
//!     Opened,
//!     /// Money came in.
//!     Deposited { amount_cents: i64 },
//! }
//! # #[derive(Default, Aggregate)] #[aggregate(name = "account", event = AccountEvent)] pub struct Account;
//! # impl Apply<account_event::Opened> for Account { fn apply(&mut self, _: &account_event::Opened) {} }
//! # impl Apply<account_event::Deposited> for Account { fn apply(&mut self, _: &account_event::Deposited) {} }
//!
//! # let dir = std::env::temp_dir().join(format!("es-doc-{}", std::process::id()));
//! // In a real crate: `concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")`, committed.
//! let report = SchemaSet::new().aggregate::<Account>().verify(&dir).unwrap();
//! assert_eq!(report.added_types, ["account/Deposited", "account/Opened"]);
//!
//! let schema = std::fs::read_to_string(dir.join("account/Deposited.v1.json")).unwrap();
//! assert!(schema.contains(r#""title": "Deposited v1""#));
//! let sample = std::fs::read_to_string(dir.join("account/Deposited.v1.sample.json")).unwrap();
//! assert_eq!(sample, "{\n  \"amount_cents\": 0\n}\n");
//!
//! // Run again (as CI does): nothing changed, nothing written.
//! let report = SchemaSet::new().aggregate::<Account>().verify(&dir).unwrap();
//! assert_eq!((report.added.len(), report.unchanged.len()), (0, 4));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! # Files
//!
//! | file | what |
//! |---|---|
//! | `index.json` | an [`Index`]: per stream type and event type its aliases, current version and the files of every version; the [`Retired`] list |
//! | `<stream_type>/<Event>.v<N>.json` | the JSON Schema (2020-12) of payloads stored at version N, self-contained, titled `"<Event> vN"` |
//! | `<stream_type>/<Event>.v<N>.sample.json` | a payload of version N, written once, never rewritten |
//!
//! Every file is written the same way: keys sorted, two-space indentation, a trailing newline,
//! so the output is byte-for-byte reproducible and diffs in review show only real changes.
//!
//! # The rules [`SchemaSet::verify`] enforces
//!
//! | situation | result |
//! |---|---|
//! | a new event type or a new version | written and reported in [`VerifyReport`] (`added_types`, `added_versions`) |
//! | a published `(type, version)` schema differs | [`Problem::Changed`], listing the differences as JSON pointers |
//! | a published event type is gone (removed, or renamed without an alias) | [`Problem::TypeRemoved`]: stored events would stop loading |
//! | a published alias is gone | [`Problem::AliasRemoved`] |
//! | a published version no longer decodes (its upcast step was dropped) | [`Problem::VersionRemoved`] |
//! | a type renamed with an alias whose versions' schemas differ from the old name's | [`Problem::Changed`] on the old name's file |
//! | a committed sample no longer decodes through [`Event::decode`] (the upcast chain) | [`Problem::SampleDoesNotDecode`] |
//! | no sample can be generated for a new version | [`Problem::SampleNotGenerated`]: write it by hand |
//! | a removal declared with [`SchemaSet::retire`] / [`SchemaSet::retire_version`] | allowed, recorded in `index.json` under `retired` |
//!
//! Setting `ES_UPDATE_SCHEMAS=1` ([`UPDATE_ENV`]) rewrites changed schema files on purpose (a
//! doc comment edited, a published mistake fixed before anyone consumed it); it never rewrites
//! samples (delete one to have it generated again) and never allows a removal.
//!
//! # Samples
//!
//! When a version is first exported, its sample is the payload type's own example when it has
//! one (`#[schemars(example = ...)]` on the type), otherwise the simplest value the schema
//! describes (zeros, empty strings, one item per list, the first variant, a fixed date). If
//! that does not decode (a type with rules of its own), the check says so and the sample is
//! written by hand. Edit a new sample freely before it is published; after that it stands for
//! the payloads stored at that version.
//!
//! [`Event::decode`]: crate::Event::decode

mod diff;
mod index;
mod sample;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::event::{DecodeError, Event};

pub use diff::Difference;
pub use index::{Index, IndexEvent, IndexVersion, Retired};

/// Setting this environment variable to `1` makes [`SchemaSet::verify`] overwrite changed
/// schema files instead of failing.
pub const UPDATE_ENV: &str = "ES_UPDATE_SCHEMAS";

/// The name of the index file written beside the schemas.
pub const INDEX_FILE: &str = "index.json";

/// The JSON Schema dialect every schema declares in `$schema`.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Gives a generated schema its dialect and its stable title, `"<event type> v<version>"`.
pub(crate) fn stamp(
    mut schema: schemars::Schema,
    event_type: &str,
    version: u32,
) -> schemars::Schema {
    let object = schema.ensure_object();
    object.insert("$schema".into(), DIALECT.into());
    object.insert("title".into(), format!("{event_type} v{version}").into());
    schema
}

/// The schema file of an event version, relative to the export directory.
pub fn schema_file(stream_type: &str, event_type: &str, version: u32) -> String {
    format!("{stream_type}/{event_type}.v{version}.json")
}

/// The sample file of an event version, relative to the export directory.
pub fn sample_file(stream_type: &str, event_type: &str, version: u32) -> String {
    format!("{stream_type}/{event_type}.v{version}.sample.json")
}

type DecodeFn = fn(&str, u32, &str) -> Result<(), DecodeError>;

fn decode_with<E: Event>(event_type: &str, version: u32, payload: &str) -> Result<(), DecodeError> {
    E::decode(event_type, version, payload).map(drop)
}

/// One event type of a set, with the schema of each version it decodes.
#[derive(Debug, Clone)]
pub(crate) struct EventEntry {
    pub(crate) stream_type: String,
    pub(crate) event_type: &'static str,
    pub(crate) aliases: &'static [&'static str],
    pub(crate) current_version: u32,
    /// Oldest first.
    pub(crate) versions: Vec<(u32, schemars::Schema)>,
    decode: DecodeFn,
}

/// The schemas of a set of event enums, with what was retired on purpose.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    pub(crate) entries: Vec<EventEntry>,
    retirements: Vec<Retired>,
    /// Overrides `ES_UPDATE_SCHEMAS` when set.
    update: Option<bool>,
}

/// A schema export or check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The code breaks what was published: stored events or consumers would fail.
    #[error("{}", describe_problems(.dir, .problems))]
    Incompatible {
        /// The checked directory.
        dir: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
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
    /// A committed file is not JSON, or `index.json` is not an index.
    #[error("`{}` is not valid JSON of its kind: {source}", .path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// One way the code breaks the published contracts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A published schema differs from the code's.
    #[error(
        "`{file}` changed, but a published event version never changes: {}; bump the event's version and keep the old payload type as an upcast step (`#[event(version = N + 1, upcast(N = OldPayload))]`), or set ES_UPDATE_SCHEMAS=1 if the change is deliberate and compatible (a doc comment)",
        list(.differences)
    )]
    Changed {
        /// The schema file, relative to the directory.
        file: String,
        /// What changed, as JSON pointers into the schema.
        differences: Vec<Difference>,
    },
    /// A published event type is no longer known to the code.
    #[error(
        "event type `{event_type}` of `{stream_type}` was published (versions {}) but the code no longer knows it: stored events of this type would stop loading with \"unknown event type `{event_type}`\"; keep its variant, or if it was renamed add `aliases = [\"{event_type}\"]` to the renamed variant{}, or retire it deliberately with `SchemaSet::retire(\"{stream_type}\", \"{event_type}\", \"why\")`",
        list(.versions),
        candidates(.added)
    )]
    TypeRemoved {
        /// The stream type.
        stream_type: String,
        /// The removed event type.
        event_type: String,
        /// Its published versions.
        versions: Vec<u32>,
        /// Event types of the same stream type that are new, which may be its new name.
        added: Vec<String>,
    },
    /// A published alias is no longer known to the code.
    #[error(
        "alias `{alias}` of event type `{event_type}` (`{stream_type}`) was published but the code no longer knows it: stored events under `{alias}` would stop loading with \"unknown event type `{alias}`\"; keep the alias, or retire it deliberately with `SchemaSet::retire(\"{stream_type}\", \"{alias}\", \"why\")`"
    )]
    AliasRemoved {
        /// The stream type.
        stream_type: String,
        /// The removed alias.
        alias: String,
        /// The event type it belonged to.
        event_type: String,
    },
    /// A published version no longer decodes.
    #[error(
        "version {version} of event type `{event_type}` (`{stream_type}`) was published but no longer decodes (the code knows versions {}): stored events at version {version} would stop loading; keep its upcast step, or retire the version deliberately with `SchemaSet::retire_version(\"{stream_type}\", \"{event_type}\", {version}, \"why\")`",
        list(.known)
    )]
    VersionRemoved {
        /// The stream type.
        stream_type: String,
        /// The event type (or alias) as published.
        event_type: String,
        /// The version.
        version: u32,
        /// The versions the code decodes now.
        known: Vec<u32>,
    },
    /// A committed sample fails to decode through today's code.
    #[error(
        "sample `{file}` no longer decodes: {source}; stored events of this version would fail to load the same way, so fix the upcast step or the payload type (a sample is never rewritten)"
    )]
    SampleDoesNotDecode {
        /// The sample file, relative to the directory.
        file: String,
        /// What decoding reported.
        source: DecodeError,
    },
    /// No sample could be generated for a new version.
    #[error(
        "cannot generate sample `{file}`{}: write a payload of this version there by hand",
        .source.as_ref().map(|e| format!(" (the simplest value of the schema does not decode: {e})")).unwrap_or_default()
    )]
    SampleNotGenerated {
        /// The sample file, relative to the directory.
        file: String,
        /// Why the generated value was refused, if one was generated.
        source: Option<DecodeError>,
    },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn candidates(added: &[String]) -> String {
    match added {
        [] => String::new(),
        [one] => format!(" (new here: `{one}`)"),
        many => format!(
            " (new here: {})",
            many.iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn describe_problems(dir: &Path, problems: &[Problem]) -> String {
    let mut text = format!(
        "the event contracts in `{}` would break what is published ({} problem{}):",
        dir.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        text.push_str("\n  - ");
        text.push_str(&problem.to_string());
    }
    text
}

/// What [`SchemaSet::verify`] found and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Schema and sample files that were already there and unchanged (or, for samples, still
    /// decode).
    pub unchanged: Vec<PathBuf>,
    /// Files written now for the first time.
    pub added: Vec<PathBuf>,
    /// Schema files overwritten because `ES_UPDATE_SCHEMAS=1`.
    pub updated: Vec<PathBuf>,
    /// Event types that were not published before, as `stream_type/EventType`.
    pub added_types: Vec<String>,
    /// New versions of published event types, as `stream_type/EventType vN`.
    pub added_versions: Vec<String>,
    /// Removals declared now with [`SchemaSet::retire`] or [`SchemaSet::retire_version`].
    pub retired: Vec<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files unchanged, {} added, {} updated; new event types: {}; new versions: {}; retired: {}",
            self.unchanged.len(),
            self.added.len(),
            self.updated.len(),
            none_or_list(&self.added_types),
            none_or_list(&self.added_versions),
            none_or_list(&self.retired),
        )
    }
}

fn none_or_list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

impl SchemaSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the events of aggregate `A`, filed under its name (the stream type).
    pub fn aggregate<A: Aggregate>(self) -> Self {
        self.events::<A::Event>(A::NAME)
    }

    /// Adds the events of `E`, filed under `stream_type`.
    pub fn events<E: Event>(mut self, stream_type: &str) -> Self {
        let mut schemas = E::schemas();
        for event_type in E::TYPES {
            let mut versions: Vec<(u32, schemars::Schema)> = Vec::new();
            schemas.retain(|schema| {
                if schema.event_type == event_type.name {
                    versions.push((schema.version, schema.schema.clone()));
                    false
                } else {
                    true
                }
            });
            versions.sort_by_key(|(version, _)| *version);
            self.entries.push(EventEntry {
                stream_type: stream_type.to_owned(),
                event_type: event_type.name,
                aliases: event_type.aliases,
                current_version: event_type.version,
                versions,
                decode: decode_with::<E>,
            });
        }
        self.entries.sort_by(|a, b| {
            (a.stream_type.as_str(), a.event_type).cmp(&(b.stream_type.as_str(), b.event_type))
        });
        self
    }

    /// Declares that a published event type or alias of `stream_type` was removed on purpose:
    /// stored events under that name will no longer load, and someone decided so (the events
    /// were migrated, or never reached production). [`SchemaSet::verify`] then accepts the
    /// removal and records it, with `reason`, under `retired` in `index.json`; the schema files
    /// stay for readers of old data.
    pub fn retire(mut self, stream_type: &str, event_type: &str, reason: &str) -> Self {
        self.retirements.push(Retired {
            stream_type: stream_type.to_owned(),
            event_type: event_type.to_owned(),
            version: None,
            reason: reason.to_owned(),
            versions: Vec::new(),
        });
        self
    }

    /// Declares that one published version of an event type was removed on purpose (its
    /// upcast step dropped after the stored events were migrated); see [`SchemaSet::retire`].
    pub fn retire_version(
        mut self,
        stream_type: &str,
        event_type: &str,
        version: u32,
        reason: &str,
    ) -> Self {
        self.retirements.push(Retired {
            stream_type: stream_type.to_owned(),
            event_type: event_type.to_owned(),
            version: Some(version),
            reason: reason.to_owned(),
            versions: Vec::new(),
        });
        self
    }

    /// Whether [`SchemaSet::verify`] overwrites changed schema files, whatever
    /// `ES_UPDATE_SCHEMAS` says (for tests and tools that must not depend on the environment).
    pub fn updating(mut self, update: bool) -> Self {
        self.update = Some(update);
        self
    }

    /// The index of the code's event types (without retirements, which live in the committed
    /// `index.json`).
    pub fn index(&self) -> Index {
        Index {
            events: self
                .entries
                .iter()
                .map(|entry| IndexEvent {
                    stream_type: entry.stream_type.clone(),
                    event_type: entry.event_type.to_owned(),
                    aliases: entry.aliases.iter().map(|a| (*a).to_owned()).collect(),
                    current_version: entry.current_version,
                    versions: entry
                        .versions
                        .iter()
                        .map(|(version, _)| IndexVersion {
                            version: *version,
                            schema: schema_file(&entry.stream_type, entry.event_type, *version),
                            sample: sample_file(&entry.stream_type, entry.event_type, *version),
                        })
                        .collect(),
                })
                .collect(),
            retired: Vec::new(),
        }
    }

    /// The schema of `event_type` (a name or an alias) at `version`.
    pub fn get(&self, event_type: &str, version: u32) -> Option<&schemars::Schema> {
        self.entries
            .iter()
            .find(|entry| entry.event_type == event_type || entry.aliases.contains(&event_type))
            .and_then(|entry| entry.versions.iter().find(|(v, _)| *v == version))
            .map(|(_, schema)| schema)
    }

    /// Writes every schema and the index into `dir`, overwriting them, and the samples that
    /// are missing (samples are never overwritten). Use [`SchemaSet::verify`] on committed
    /// contracts; this is for throw-away copies.
    pub fn export(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, SchemaError> {
        let dir = dir.as_ref();
        let mut written = Vec::new();
        let mut problems = Vec::new();
        for entry in &self.entries {
            for (version, schema) in &entry.versions {
                let path = dir.join(schema_file(&entry.stream_type, entry.event_type, *version));
                write_json(&path, schema.as_value())?;
                written.push(path);
                let sample = sample_file(&entry.stream_type, entry.event_type, *version);
                if !dir.join(&sample).exists() {
                    match new_sample(entry, *version, schema, &sample) {
                        Ok(value) => {
                            write_json(&dir.join(&sample), &value)?;
                            written.push(dir.join(&sample));
                        }
                        Err(problem) => problems.push(problem),
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(SchemaError::Incompatible {
                dir: dir.to_owned(),
                problems,
            });
        }
        write_json(&dir.join(INDEX_FILE), &to_value(&self.index(), dir)?)?;
        Ok(written)
    }

    /// Checks the code against the contracts committed in `dir` (see the module documentation
    /// for the rules), writes what is new (schemas, samples, `index.json`) and returns what it
    /// found. Fails with [`SchemaError::Incompatible`] listing every problem at once; the index
    /// is then left as it was.
    pub fn verify(&self, dir: impl AsRef<Path>) -> Result<VerifyReport, SchemaError> {
        let update = self
            .update
            .unwrap_or_else(|| std::env::var(UPDATE_ENV).is_ok_and(|value| value == "1"));
        let dir = dir.as_ref();
        let committed = read_index(&dir.join(INDEX_FILE))?;
        let mut report = VerifyReport::default();
        let mut problems = Vec::new();

        for entry in &self.entries {
            for (version, schema) in &entry.versions {
                let file = schema_file(&entry.stream_type, entry.event_type, *version);
                let path = dir.join(&file);
                let generated = canonical(schema.as_value());
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
                    Some(committed) => problems.push(Problem::Changed {
                        file,
                        differences: diff::diff(&committed, &generated),
                    }),
                }
                let file = sample_file(&entry.stream_type, entry.event_type, *version);
                let path = dir.join(&file);
                match read_text(&path)? {
                    Some(text) => match (entry.decode)(entry.event_type, *version, &text) {
                        Ok(()) => report.unchanged.push(path),
                        Err(source) => problems.push(Problem::SampleDoesNotDecode { file, source }),
                    },
                    None => match new_sample(entry, *version, schema, &file) {
                        Ok(value) => {
                            write_json(&path, &value)?;
                            report.added.push(path);
                        }
                        Err(problem) => problems.push(problem),
                    },
                }
            }
        }

        let mut retired = committed
            .as_ref()
            .map(|index| index.retired.clone())
            .unwrap_or_default();
        if let Some(committed) = &committed {
            self.check_published(dir, committed, &mut retired, &mut problems, &mut report)?;
        } else {
            for entry in &self.entries {
                report
                    .added_types
                    .push(format!("{}/{}", entry.stream_type, entry.event_type));
            }
        }
        if !problems.is_empty() {
            return Err(SchemaError::Incompatible {
                dir: dir.to_owned(),
                problems,
            });
        }
        let mut index = self.index();
        retired.sort_by(|a, b| {
            (&a.stream_type, &a.event_type, a.version).cmp(&(
                &b.stream_type,
                &b.event_type,
                b.version,
            ))
        });
        index.retired = retired;
        write_json(&dir.join(INDEX_FILE), &to_value(&index, dir)?)?;
        Ok(report)
    }

    /// The rules about what was published before: nothing published disappears unless it is
    /// retired, and a renamed type keeps the schemas of its old name. Records new retirements
    /// and additions.
    fn check_published(
        &self,
        dir: &Path,
        committed: &Index,
        retired: &mut Vec<Retired>,
        problems: &mut Vec<Problem>,
        report: &mut VerifyReport,
    ) -> Result<(), SchemaError> {
        let is_retired =
            |retired: &[Retired], stream_type: &str, name: &str, version: Option<u32>| {
                retired.iter().any(|r| {
                    r.stream_type == stream_type
                        && r.event_type == name
                        && (r.version.is_none() || r.version == version)
                })
            };
        let live = |stream_type: &str, name: &str| {
            self.entries.iter().find(|entry| {
                entry.stream_type == stream_type
                    && (entry.event_type == name || entry.aliases.contains(&name))
            })
        };
        let published = |stream_type: &str, name: &str| {
            committed.events.iter().any(|event| {
                event.stream_type == stream_type
                    && (event.event_type == name || event.aliases.iter().any(|a| a == name))
            })
        };
        // Retirements declared now, of names and versions the code no longer has.
        for retirement in &self.retirements {
            let Some(event) = committed.events.iter().find(|event| {
                event.stream_type == retirement.stream_type
                    && (event.event_type == retirement.event_type
                        || event.aliases.contains(&retirement.event_type))
            }) else {
                continue;
            };
            let still_known =
                live(&retirement.stream_type, &retirement.event_type).is_some_and(|entry| {
                    retirement
                        .version
                        .is_none_or(|version| entry.versions.iter().any(|(v, _)| *v == version))
                });
            if still_known
                || is_retired(
                    retired,
                    &retirement.stream_type,
                    &retirement.event_type,
                    retirement.version,
                )
            {
                continue;
            }
            let mut record = retirement.clone();
            record.versions = event
                .versions
                .iter()
                .filter(|v| {
                    retirement
                        .version
                        .is_none_or(|version| v.version == version)
                })
                .cloned()
                .collect();
            report.retired.push(match record.version {
                Some(version) => format!("{}/{} v{version}", record.stream_type, record.event_type),
                None => format!("{}/{}", record.stream_type, record.event_type),
            });
            retired.push(record);
        }

        let added_here = |stream_type: &str| -> Vec<String> {
            self.entries
                .iter()
                .filter(|entry| {
                    entry.stream_type == stream_type && !published(stream_type, entry.event_type)
                })
                .map(|entry| entry.event_type.to_owned())
                .collect()
        };
        for event in &committed.events {
            let names = std::iter::once(&event.event_type).chain(&event.aliases);
            for name in names {
                if is_retired(retired, &event.stream_type, name, None) {
                    continue;
                }
                let Some(entry) = live(&event.stream_type, name) else {
                    problems.push(if *name == event.event_type {
                        Problem::TypeRemoved {
                            stream_type: event.stream_type.clone(),
                            event_type: name.clone(),
                            versions: event.versions.iter().map(|v| v.version).collect(),
                            added: added_here(&event.stream_type),
                        }
                    } else {
                        Problem::AliasRemoved {
                            stream_type: event.stream_type.clone(),
                            alias: name.clone(),
                            event_type: event.event_type.clone(),
                        }
                    });
                    continue;
                };
                for published_version in &event.versions {
                    let version = published_version.version;
                    if is_retired(retired, &event.stream_type, name, Some(version)) {
                        continue;
                    }
                    let Some((_, schema)) = entry.versions.iter().find(|(v, _)| *v == version)
                    else {
                        problems.push(Problem::VersionRemoved {
                            stream_type: event.stream_type.clone(),
                            event_type: name.clone(),
                            version,
                            known: entry.versions.iter().map(|(v, _)| *v).collect(),
                        });
                        continue;
                    };
                    // Renamed with an alias: rows stored under the old name must read as the
                    // new type's same version, so the schemas agree but for the title.
                    if entry.event_type != event.event_type && *name == event.event_type {
                        let path = dir.join(&published_version.schema);
                        if let Some(old) = read_json(&path)? {
                            let untitled = |value: &Value| {
                                let mut value = canonical(value);
                                if let Some(object) = value.as_object_mut() {
                                    object.remove("title");
                                }
                                value
                            };
                            let (old, new) = (untitled(&old), untitled(schema.as_value()));
                            if old != new {
                                problems.push(Problem::Changed {
                                    file: published_version.schema.clone(),
                                    differences: diff::diff(&old, &new),
                                });
                            }
                        }
                    }
                }
            }
        }
        for entry in &self.entries {
            let Some(event) = committed.events.iter().find(|event| {
                event.stream_type == entry.stream_type
                    && (event.event_type == entry.event_type
                        || entry.aliases.contains(&event.event_type.as_str()))
            }) else {
                report
                    .added_types
                    .push(format!("{}/{}", entry.stream_type, entry.event_type));
                continue;
            };
            for (version, _) in &entry.versions {
                if !event.versions.iter().any(|v| v.version == *version) {
                    report.added_versions.push(format!(
                        "{}/{} v{version}",
                        entry.stream_type, entry.event_type
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A first sample for a new version, checked to decode.
fn new_sample(
    entry: &EventEntry,
    version: u32,
    schema: &schemars::Schema,
    file: &str,
) -> Result<Value, Problem> {
    let Some(value) = sample::generate(schema.as_value()) else {
        return Err(Problem::SampleNotGenerated {
            file: file.to_owned(),
            source: None,
        });
    };
    match (entry.decode)(entry.event_type, version, &value.to_string()) {
        Ok(()) => Ok(value),
        Err(source) => Err(Problem::SampleNotGenerated {
            file: file.to_owned(),
            source: Some(source),
        }),
    }
}

/// `value` with every object's keys sorted, whatever order serde_json keeps them in.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key.clone(), canonical(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The one way every file is written: sorted keys, two-space indentation, a trailing newline.
pub(crate) fn to_canonical_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&canonical(value))
        .unwrap_or_else(|_| unreachable!("a serde_json::Value always serializes"));
    text.push('\n');
    text
}

fn to_value<T: serde::Serialize>(value: &T, dir: &Path) -> Result<Value, SchemaError> {
    serde_json::to_value(value).map_err(|source| SchemaError::InvalidFile {
        path: dir.join(INDEX_FILE),
        source,
    })
}

fn read_text(path: &Path) -> Result<Option<String>, SchemaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SchemaError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, SchemaError> {
    read_text(path)?
        .map(|text| {
            serde_json::from_str::<Value>(&text)
                .map(|value| canonical(&value))
                .map_err(|source| SchemaError::InvalidFile {
                    path: path.to_owned(),
                    source,
                })
        })
        .transpose()
}

fn read_index(path: &Path) -> Result<Option<Index>, SchemaError> {
    read_text(path)?
        .map(|text| {
            Index::parse(&text).map_err(|source| SchemaError::InvalidFile {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()
}

fn write_json(path: &Path, value: &Value) -> Result<(), SchemaError> {
    let io_error = |action, source| SchemaError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| io_error("create the directory of", source))?;
    }
    fs::write(path, to_canonical_text(value)).map_err(|source| io_error("write", source))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{sample, to_canonical_text};

    #[test]
    fn files_are_written_with_sorted_keys_and_a_trailing_newline() {
        let text = to_canonical_text(&json!({ "b": 1, "a": { "d": [2], "c": null } }));
        assert_eq!(
            text,
            "{\n  \"a\": {\n    \"c\": null,\n    \"d\": [\n      2\n    ]\n  },\n  \"b\": 1\n}\n"
        );
    }

    #[test]
    fn samples_are_the_simplest_values_a_schema_describes() {
        let schema = json!({
            "$defs": { "Item": { "type": "object", "properties": { "sku": { "type": "string", "minLength": 2 } } } },
            "type": "object",
            "properties": {
                "at": { "type": "string", "format": "date-time" },
                "id": { "type": "string", "format": "uuid" },
                "count": { "type": "integer", "minimum": 1 },
                "ratio": { "type": "number" },
                "note": { "type": ["string", "null"] },
                "items": { "type": "array", "items": { "$ref": "#/$defs/Item" } },
                "kind": { "oneOf": [{ "type": "string", "enum": ["Small", "Large"] }] },
                "maybe": { "anyOf": [{ "type": "null" }, { "$ref": "#/$defs/Item" }] }
            }
        });
        assert_eq!(
            sample::generate(&schema),
            Some(json!({
                "at": "1970-01-01T00:00:00Z",
                "id": "00000000-0000-0000-0000-000000000000",
                "count": 1,
                "ratio": 0,
                "note": "",
                "items": [{ "sku": "xx" }],
                "kind": "Small",
                "maybe": { "sku": "xx" }
            }))
        );
        let with_example = json!({ "type": "object", "examples": [{ "price_cents": 250 }] });
        assert_eq!(
            sample::generate(&with_example),
            Some(json!({ "price_cents": 250 }))
        );
    }
}
