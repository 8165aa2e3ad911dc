//! A first sample payload for a schema: the schema's own example when it has one
//! (`#[schemars(example = ...)]`), otherwise the simplest value it describes. The sample is
//! written once, when its version is first exported, and never rewritten: it stands for the
//! payloads stored at that version, and every check decodes it with the code of the day.

use serde_json::{Map, Value, json};

/// How deep references are followed before giving up on a recursive type.
const MAX_DEPTH: usize = 24;

/// A value the schema describes, or `None` when this cannot find one (the user writes it).
pub(super) fn generate(schema: &Value) -> Option<Value> {
    if let Some(example) = schema.get("examples").and_then(|e| e.get(0)) {
        return Some(example.clone());
    }
    Sampler { root: schema }.value(schema, 0)
}

struct Sampler<'a> {
    root: &'a Value,
}

impl Sampler<'_> {
    fn value(&self, schema: &Value, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let schema = match schema {
            Value::Bool(true) => return Some(Value::Null),
            Value::Object(object) => object,
            _ => return None,
        };
        for key in ["const", "default"] {
            if let Some(value) = schema.get(key) {
                return Some(value.clone());
            }
        }
        if let Some(value) = schema.get("examples").and_then(|e| e.get(0)) {
            return Some(value.clone());
        }
        if let Some(value) = schema.get("enum").and_then(|e| e.get(0)) {
            return Some(value.clone());
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let target = self.root.pointer(reference.strip_prefix('#')?)?;
            return self.value(target, depth + 1);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                // Prefer an alternative that carries data over `null`.
                let mut fallback = None;
                for option in options {
                    match self.value(option, depth + 1) {
                        Some(Value::Null) => fallback = Some(Value::Null),
                        Some(value) => return Some(value),
                        None => {}
                    }
                }
                return fallback;
            }
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = Map::new();
            for part in parts {
                match self.value(part, depth + 1)? {
                    Value::Object(object) => merged.extend(object),
                    other if parts.len() == 1 => return Some(other),
                    _ => return None,
                }
            }
            return Some(Value::Object(merged));
        }
        let ty = match schema.get("type") {
            Some(Value::String(ty)) => ty.as_str(),
            Some(Value::Array(types)) => types
                .iter()
                .filter_map(Value::as_str)
                .find(|ty| *ty != "null")
                .unwrap_or("null"),
            _ if schema.contains_key("properties") => "object",
            _ => return Some(Value::Null),
        };
        match ty {
            "null" => Some(Value::Null),
            "boolean" => Some(Value::Bool(false)),
            "integer" | "number" => Some(number(schema)),
            "string" => Some(Value::String(string(schema))),
            "array" => self.array(schema, depth),
            "object" => self.object(schema, depth),
            _ => None,
        }
    }

    fn array(&self, schema: &Map<String, Value>, depth: usize) -> Option<Value> {
        if let Some(prefix) = schema.get("prefixItems").and_then(Value::as_array) {
            return prefix
                .iter()
                .map(|item| self.value(item, depth + 1))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array);
        }
        let Some(items) = schema.get("items") else {
            return Some(json!([]));
        };
        let minimum = schema
            .get("minItems")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1);
        let item = self.value(items, depth + 1)?;
        let count = usize::try_from(minimum).ok()?;
        Some(Value::Array(vec![item; count]))
    }

    fn object(&self, schema: &Map<String, Value>, depth: usize) -> Option<Value> {
        let mut object = Map::new();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                object.insert(name.clone(), self.value(property, depth + 1)?);
            }
        }
        Some(Value::Object(object))
    }
}

fn number(schema: &Map<String, Value>) -> Value {
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let mut value = bound("minimum").map_or(0.0, |minimum| minimum.max(0.0));
    if let Some(minimum) = bound("exclusiveMinimum").filter(|minimum| value <= *minimum) {
        value = minimum.floor() + 1.0;
    }
    if let Some(maximum) = bound("maximum").filter(|maximum| value > *maximum) {
        value = maximum.floor();
    }
    // Whole numbers are written without a fraction, so that integer types read them.
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

fn string(schema: &Map<String, Value>) -> String {
    let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
    let text = match format {
        "date-time" => "1970-01-01T00:00:00Z",
        "date" => "1970-01-01",
        "time" => "00:00:00",
        "uuid" => "00000000-0000-0000-0000-000000000000",
        "email" => "someone@example.com",
        "uri" | "url" | "iri" => "https://example.com/",
        "hostname" => "example.com",
        "ipv4" => "127.0.0.1",
        "ipv6" => "::1",
        "duration" => "PT0S",
        _ => "",
    };
    let minimum = schema
        .get("minLength")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if text.len() >= minimum {
        text.to_owned()
    } else {
        format!("{text}{}", "x".repeat(minimum - text.len()))
    }
}
