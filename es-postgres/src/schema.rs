//! The PostgreSQL schema that holds a store's tables.

use crate::error::PgError;

/// The schema a store uses unless told otherwise: `es`.
///
/// Not `public`, so the store's migration history (`_sqlx_migrations`, kept per schema) never
/// mixes with an application's own sqlx migrations.
pub const DEFAULT_SCHEMA: &str = "es";

/// The longest schema name accepted: the notification channel `<schema>_events` must fit
/// PostgreSQL's 63-byte identifier limit.
pub(crate) const MAX_SCHEMA_LEN: usize = 63 - CHANNEL_SUFFIX.len();

/// Appended to the schema name to form the channel appends notify.
pub(crate) const CHANNEL_SUFFIX: &str = "_events";

/// Checks a schema name: 1 to 56 characters, lower-case ASCII letters, digits and underscores,
/// not starting with a digit, and not starting with `pg_` (reserved by PostgreSQL).
///
/// Lower case only, so the name means the same quoted or unquoted in hand-written SQL.
pub(crate) fn validate(schema: &str) -> Result<(), PgError> {
    let reason = if schema.is_empty() {
        "it is empty"
    } else if schema.len() > MAX_SCHEMA_LEN {
        "it is longer than 56 characters"
    } else if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        "only lower-case ASCII letters, digits and underscores are allowed"
    } else if schema.as_bytes()[0].is_ascii_digit() {
        "it starts with a digit"
    } else if schema.starts_with("pg_") {
        "names starting with `pg_` are reserved by PostgreSQL"
    } else {
        return Ok(());
    };
    Err(PgError::InvalidSchema {
        schema: schema.to_owned(),
        reason,
    })
}

/// The schema name as a quoted SQL identifier. Only called on validated names, which hold no
/// quote, so no escaping is needed; quoting keeps reserved words (`user`, `order`) usable.
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for name in [
            "es",
            "billing",
            "_private",
            "es_test_17_ab",
            "order",
            &"a".repeat(56),
        ] {
            assert!(validate(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "a".repeat(57);
        for (name, reason) in [
            ("", "empty"),
            (long.as_str(), "longer"),
            ("Billing", "lower-case"),
            ("bill-ing", "lower-case"),
            ("a\"b", "lower-case"),
            ("a;drop", "lower-case"),
            ("schéma", "lower-case"),
            ("1st", "digit"),
            ("pg_mine", "reserved"),
        ] {
            match validate(name) {
                Err(PgError::InvalidSchema {
                    schema,
                    reason: got,
                }) => {
                    assert_eq!(schema, name);
                    assert!(got.contains(reason), "{name:?}: {got}");
                }
                other => panic!("{name:?} was accepted: {other:?}"),
            }
        }
    }
}
