//! `index.json`: which file holds the schema and the sample of every event type, alias and
//! version, and what was retired on purpose.

use serde::{Deserialize, Serialize};

/// The contents of `index.json`: everything a consumer needs to find the schema of a stored
/// row from its stream type, event type (name or alias) and schema version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Every event type the code knows, sorted by stream type and name.
    pub events: Vec<IndexEvent>,
    /// Event types, aliases and versions removed on purpose (see [`super::SchemaSet::retire`]):
    /// stored events of these no longer load, which someone decided and wrote down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Retired>,
}

/// One event type in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEvent {
    /// The stream type (aggregate name) the event belongs to.
    pub stream_type: String,
    /// The stable name stored with new events.
    pub event_type: String,
    /// Former names: rows stored under them load as this event type.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The version the code writes today.
    pub current_version: u32,
    /// Every version the code can load, oldest first.
    pub versions: Vec<IndexVersion>,
}

/// The files of one event version, relative to the directory of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexVersion {
    /// The schema version.
    pub version: u32,
    /// The JSON Schema of payloads stored at this version.
    pub schema: String,
    /// A payload of this version, decoded by every check.
    pub sample: String,
}

/// An event type, alias or version that was removed on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The stream type.
    pub stream_type: String,
    /// The retired event type name or alias.
    pub event_type: String,
    /// The retired version; `None` when the whole name is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Why stored events of it may stop loading, as the developer wrote it.
    pub reason: String,
    /// The files of what was retired, kept for readers of old data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<IndexVersion>,
}

impl Index {
    /// The files of a stored row: its stream type, its event type as stored (a name or an
    /// alias) and its schema version. Retired names and versions resolve too, so old data stays
    /// readable.
    pub fn resolve(
        &self,
        stream_type: &str,
        event_type: &str,
        version: u32,
    ) -> Option<&IndexVersion> {
        let live = self
            .events
            .iter()
            .filter(|event| event.stream_type == stream_type)
            .find(|event| {
                event.event_type == event_type || event.aliases.iter().any(|a| a == event_type)
            })
            .and_then(|event| event.versions.iter().find(|v| v.version == version));
        live.or_else(|| {
            self.retired
                .iter()
                .filter(|retired| {
                    retired.stream_type == stream_type && retired.event_type == event_type
                })
                .flat_map(|retired| &retired.versions)
                .find(|v| v.version == version)
        })
    }

    /// Reads `index.json` text, also in the flat format of earlier releases (a list of
    /// `{aggregate, event_type, version, current, file}`), so that their published types are
    /// checked too.
    pub(super) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Current(Index),
            Flat(Vec<FlatEntry>),
        }
        #[derive(Deserialize)]
        struct FlatEntry {
            aggregate: String,
            event_type: String,
            version: u32,
            current: bool,
            file: String,
        }
        Ok(match serde_json::from_str(text)? {
            Any::Current(index) => index,
            Any::Flat(entries) => {
                let mut index = Index::default();
                for entry in entries {
                    let position = index.events.iter().position(|event| {
                        event.stream_type == entry.aggregate && event.event_type == entry.event_type
                    });
                    let position = position.unwrap_or_else(|| {
                        index.events.push(IndexEvent {
                            stream_type: entry.aggregate.clone(),
                            event_type: entry.event_type.clone(),
                            aliases: Vec::new(),
                            current_version: entry.version,
                            versions: Vec::new(),
                        });
                        index.events.len() - 1
                    });
                    let event = &mut index.events[position];
                    if entry.current {
                        event.current_version = entry.version;
                    }
                    event.versions.push(IndexVersion {
                        version: entry.version,
                        sample: entry.file.replace(".json", ".sample.json"),
                        schema: entry.file,
                    });
                    event.versions.sort_by_key(|v| v.version);
                }
                index
            }
        })
    }
}
