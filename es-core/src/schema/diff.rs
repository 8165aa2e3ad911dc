//! What changed between two schemas, as JSON pointers.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// One difference between a committed schema and the one the code generates.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Difference {
    /// Something the committed schema did not have, e.g. `/properties/currency`.
    Added {
        /// Where, as a JSON pointer into the schema.
        pointer: String,
    },
    /// Something the committed schema had and the code's lacks.
    Removed {
        /// Where, as a JSON pointer into the schema.
        pointer: String,
    },
    /// A name added to a list of names, e.g. `currency` to `/required`.
    AddedTo {
        /// The list, as a JSON pointer.
        pointer: String,
        /// The name.
        name: String,
    },
    /// A name removed from a list of names.
    RemovedFrom {
        /// The list, as a JSON pointer.
        pointer: String,
        /// The name.
        name: String,
    },
    /// A value changed, e.g. `/properties/price/type` from `"integer"` to `"number"`.
    Changed {
        /// Where, as a JSON pointer into the schema.
        pointer: String,
        /// The committed value, as compact JSON.
        before: String,
        /// The code's value, as compact JSON.
        after: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Added { pointer } => write!(f, "added `{pointer}`"),
            Difference::Removed { pointer } => write!(f, "removed `{pointer}`"),
            Difference::AddedTo { pointer, name } => write!(f, "added `{name}` to `{pointer}`"),
            Difference::RemovedFrom { pointer, name } => {
                write!(f, "removed `{name}` from `{pointer}`")
            }
            Difference::Changed {
                pointer,
                before,
                after,
            } => write!(f, "changed `{pointer}` from {before} to {after}"),
        }
    }
}

/// Every difference from `before` to `after`, in pointer order.
pub(super) fn diff(before: &Value, after: &Value) -> Vec<Difference> {
    let mut differences = Vec::new();
    walk(String::new(), before, after, &mut differences);
    differences
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(pointer: String, before: &Value, after: &Value, out: &mut Vec<Difference>) {
    match (before, after) {
        (Value::Object(before), Value::Object(after)) => {
            let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
            for key in keys {
                let child = format!("{pointer}/{}", escape(key));
                match (before.get(key), after.get(key)) {
                    (Some(b), Some(a)) => walk(child, b, a, out),
                    (Some(_), None) => out.push(Difference::Removed { pointer: child }),
                    (None, Some(_)) => out.push(Difference::Added { pointer: child }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if names(b).is_some() && names(a).is_some() => {
            let (b, a) = (names(b).unwrap_or_default(), names(a).unwrap_or_default());
            for name in a.difference(&b) {
                out.push(Difference::AddedTo {
                    pointer: pointer.clone(),
                    name: (*name).to_owned(),
                });
            }
            for name in b.difference(&a) {
                out.push(Difference::RemovedFrom {
                    pointer: pointer.clone(),
                    name: (*name).to_owned(),
                });
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (index, (b, a)) in b.iter().zip(a).enumerate() {
                walk(format!("{pointer}/{index}"), b, a, out);
            }
        }
        (b, a) if b == a => {}
        (b, a) => out.push(Difference::Changed {
            pointer,
            before: b.to_string(),
            after: a.to_string(),
        }),
    }
}

/// The strings of an array made only of strings (`required`, `enum` of names, `type` lists):
/// compared as sets, since their order means nothing to a reader.
fn names(values: &[Value]) -> Option<BTreeSet<&str>> {
    values.iter().map(Value::as_str).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Difference, diff};

    #[test]
    fn differences_are_json_pointers_with_what_happened_there() {
        let before = json!({
            "properties": { "price_cents": { "type": "integer" }, "note": { "type": "string" } },
            "required": ["price_cents", "note"],
            "title": "PriceChanged v1"
        });
        let after = json!({
            "properties": { "price_cents": { "type": "number" }, "currency": { "type": "string" } },
            "required": ["note", "currency", "price_cents"],
            "title": "PriceChanged v1"
        });
        let shown: Vec<String> = diff(&before, &after)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "added `/properties/currency`",
                "removed `/properties/note`",
                "changed `/properties/price_cents/type` from \"integer\" to \"number\"",
                "added `currency` to `/required`",
            ]
        );
        assert_eq!(diff(&before, &before), []);
        assert_eq!(
            diff(&json!({ "a/b": 1 }), &json!({ "a/b": 2 })),
            [Difference::Changed {
                pointer: "/a~1b".into(),
                before: "1".into(),
                after: "2".into()
            }]
        );
    }
}
