//! An [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0) document of
//! a service's events as a relay publishes them: one channel per stream type and event type,
//! at the subject [`integration::subject`] builds, and one message per event version with its
//! payload schema and the headers of [`integration::headers`].
//!
//! ```
//! use es_core::asyncapi::Service;
//! use es_core::schema::SchemaSet;
//! # use es_core::{Aggregate, Apply, Event};
//! # #[derive(Debug, Clone, PartialEq, Event)] pub enum OrderEvent { Placed { total_cents: i64 } }
//! # #[derive(Default, Aggregate)] #[aggregate(name = "order", event = OrderEvent)] pub struct Order;
//! # impl Apply<order_event::Placed> for Order { fn apply(&mut self, _: &order_event::Placed) {} }
//!
//! let schemas = SchemaSet::new().aggregate::<Order>();
//! let document = Service::new("orders", "1.4.0").document(&schemas);
//! assert_eq!(document["asyncapi"], "3.0.0");
//! assert_eq!(document["channels"]["order__Placed"]["address"], "es.order.Placed");
//! ```
//!
//! The payload schemas are the exported JSON Schemas, made to fit one document: each schema's
//! `$defs` move to `components.schemas` under `<stream type>__<event type>__v<N>__<name>` and
//! its references follow them, and `$schema` is left out, since payloads use the AsyncAPI
//! schema format (a superset of JSON Schema draft 07 that these schemas stay within).
//!
//! [`integration::subject`]: crate::integration::subject
//! [`integration::headers`]: crate::integration::headers

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::integration::{headers, subject};
use crate::schema::{SchemaError, SchemaSet, to_canonical_text};

/// The service the document describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The document's title, e.g. the service's name.
    pub title: String,
    /// The service's (or its API's) version.
    pub version: String,
    /// The subject prefix of every channel; default `es`.
    pub prefix: String,
    /// A description, if any.
    pub description: Option<String>,
}

/// The id of the shared headers schema in `components.schemas`.
pub const HEADERS_SCHEMA: &str = "EsHeaders";

impl Service {
    /// A service with the default subject prefix `es`.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            prefix: "es".to_owned(),
            description: None,
        }
    }

    /// Sets the subject prefix (one or more dot-separated tokens; empty for none).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The AsyncAPI 3.0 document of the events of `schemas`.
    pub fn document(&self, schemas: &SchemaSet) -> Value {
        let mut channels = Map::new();
        let mut operations = Map::new();
        let mut messages = Map::new();
        let mut components = Map::new();
        components.insert(HEADERS_SCHEMA.to_owned(), headers_schema());
        for entry in &schemas.entries {
            let channel_id = id(&[&entry.stream_type, entry.event_type]);
            let mut channel_messages = Map::new();
            for (version, schema) in &entry.versions {
                let message_key = format!("v{version}");
                let message_id = format!("{channel_id}__v{version}");
                let payload = hoist(schema.as_value(), &message_id, &mut components);
                let mut description = format!(
                    "`{}` of stream type `{}` at schema version {version}{}.",
                    entry.event_type,
                    entry.stream_type,
                    if *version == entry.current_version {
                        " (the version written today)"
                    } else {
                        " (older events, stored before a version bump)"
                    }
                );
                if !entry.aliases.is_empty() {
                    description.push_str(&format!(
                        " Events stored under its former names ({}) are published under this name.",
                        entry.aliases.join(", ")
                    ));
                }
                messages.insert(
                    message_id.clone(),
                    json!({
                        "name": entry.event_type,
                        "title": format!("{} v{version}", entry.event_type),
                        "summary": description,
                        "contentType": headers::CONTENT_TYPE_JSON,
                        "headers": { "$ref": format!("#/components/schemas/{HEADERS_SCHEMA}") },
                        "correlationId": {
                            "location": format!("$message.header#/{}", headers::CORRELATION_ID)
                        },
                        "payload": payload,
                        "x-es-stream-type": entry.stream_type,
                        "x-es-event-type": entry.event_type,
                        "x-es-schema-version": version,
                        "x-es-aliases": entry.aliases,
                    }),
                );
                channel_messages.insert(
                    message_key,
                    json!({ "$ref": format!("#/components/messages/{message_id}") }),
                );
            }
            let keys: Vec<String> = channel_messages.keys().cloned().collect();
            channels.insert(
                channel_id.clone(),
                json!({
                    "address": subject(&self.prefix, &entry.stream_type, entry.event_type),
                    "title": format!("{} / {}", entry.stream_type, entry.event_type),
                    "description": format!(
                        "Every `{}` event of stream type `{}`, in the order of the global log within each stream.",
                        entry.event_type, entry.stream_type
                    ),
                    "messages": channel_messages,
                }),
            );
            operations.insert(
                format!("publish__{channel_id}"),
                json!({
                    "action": "send",
                    "title": format!("Publish {}", entry.event_type),
                    "channel": { "$ref": format!("#/channels/{channel_id}") },
                    "messages": keys
                        .iter()
                        .map(|key| json!({ "$ref": format!("#/channels/{channel_id}/messages/{key}") }))
                        .collect::<Vec<_>>(),
                }),
            );
        }
        let mut info = json!({ "title": self.title, "version": self.version });
        if let Some(description) = &self.description {
            info["description"] = description.clone().into();
        }
        json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": headers::CONTENT_TYPE_JSON,
            "channels": channels,
            "operations": operations,
            "components": { "messages": messages, "schemas": components },
        })
    }

    /// Writes [`Service::document`] to `path` as JSON, in the one format of the schema files
    /// (sorted keys, two-space indentation, trailing newline).
    pub fn write(&self, schemas: &SchemaSet, path: impl AsRef<Path>) -> Result<(), SchemaError> {
        let path = path.as_ref();
        let io_error = |action, source| SchemaError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| io_error("create the directory of", source))?;
        }
        std::fs::write(path, to_canonical_text(&self.document(schemas)))
            .map_err(|source| io_error("write", source))
    }
}

/// A component or channel id from names that may hold anything: bytes outside
/// `[A-Za-z0-9_-]` become `-`, parts are joined with `__`.
fn id(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| {
            part.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("__")
}

/// The schema without `$schema`, its `$defs` moved into `components` under `<owner>__<name>`
/// and its `#/$defs/...` references pointing there.
fn hoist(schema: &Value, owner: &str, components: &mut Map<String, Value>) -> Value {
    let mut schema = schema.clone();
    let mut defs = Map::new();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        if let Some(Value::Object(found)) = object.remove("$defs") {
            defs = found;
        }
    }
    let target = |name: &str| format!("#/components/schemas/{}", id(&[owner, name]));
    rewrite_refs(&mut schema, &target);
    for (name, mut def) in defs {
        rewrite_refs(&mut def, &target);
        components.insert(id(&[owner, &name]), def);
    }
    schema
}

fn rewrite_refs(value: &mut Value, target: &dyn Fn(&str) -> String) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get_mut("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
            {
                *reference = target(name);
            }
            for child in object.values_mut() {
                rewrite_refs(child, target);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_refs(item, target)),
        _ => {}
    }
}

fn headers_schema() -> Value {
    let string = |description: &str| json!({ "type": "string", "description": description });
    let properties: Map<String, Value> = [
        (headers::MSG_ID, string("The message id: the event id (a UUID) when first published, a new id when re-driven; JetStream de-duplicates by it.")),
        (headers::EVENT_ID, json!({ "type": "string", "format": "uuid", "description": "The event id, never changed: consumers recognise events they already processed by it." })),
        (headers::TENANT, string("The tenant the event belongs to (`default` for single-tenant stores; absent means `default`). Percent-encoded outside printable ASCII, like every free-text header.")),
        (headers::STREAM_TYPE, string("The stream type (aggregate name).")),
        (headers::STREAM_ID, string("The stream id.")),
        (headers::STREAM_VERSION, json!({ "type": "string", "pattern": "^[1-9][0-9]*$", "description": "The event's version in its stream, from 1, in decimal." })),
        (headers::POSITION, json!({ "type": "string", "pattern": "^[0-9]+/[0-9]+$", "description": "The event's position in the global log: `transaction/sequence`." })),
        (headers::EVENT_TYPE, string("The stored event type name.")),
        (headers::SCHEMA_VERSION, json!({ "type": "string", "pattern": "^[0-9]+$", "description": "The payload's schema version, in decimal." })),
        (headers::CORRELATION_ID, string("The correlation id of the request that caused the event, when known.")),
        (headers::CAUSATION_ID, string("The id of the command or event that caused the event, when known.")),
        (headers::RECORDED_AT, json!({ "type": "string", "format": "date-time", "description": "When the store recorded the event (RFC 3339, UTC)." })),
        (headers::CONTENT_TYPE, json!({ "type": "string", "const": headers::CONTENT_TYPE_JSON, "description": "The payload's media type." })),
    ]
    .into_iter()
    .map(|(name, schema)| (name.to_owned(), schema))
    .collect();
    json!({
        "type": "object",
        "description": "The headers of every published event.",
        "properties": properties,
        "required": [
            headers::MSG_ID, headers::EVENT_ID, headers::STREAM_TYPE, headers::STREAM_ID, headers::STREAM_VERSION,
            headers::POSITION, headers::EVENT_TYPE, headers::SCHEMA_VERSION,
            headers::RECORDED_AT, headers::CONTENT_TYPE
        ],
    })
}
