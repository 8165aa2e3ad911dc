//! The JetStream stream events are published to, created or updated by one call.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use es_core::integration::encode_token;

use crate::error::{NatsError, check_filter_subject, check_name};

/// Where a JetStream stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives a server restart. The default.
    #[default]
    File,
    /// In memory: faster, lost when the server stops.
    Memory,
}

/// The settings of a JetStream stream: its name, the subjects it stores, how long it remembers
/// message ids to drop duplicates, where it stores and how long it keeps messages.
///
/// ```
/// use std::time::Duration;
/// use es_nats::{Storage, StreamSettings};
///
/// let settings = StreamSettings::for_prefix("acme.orders")
///     .duplicate_window(Duration::from_secs(10 * 60))
///     .max_age(Duration::from_secs(7 * 24 * 3600))
///     .storage(Storage::File);
/// assert_eq!(settings.name, "ACME_ORDERS");
/// assert_eq!(settings.subjects, vec!["acme.orders.>".to_owned()]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSettings {
    /// The stream's name.
    pub name: String,
    /// The subjects it stores; [`for_prefix`](Self::for_prefix) sets `<prefix>.>`.
    pub subjects: Vec<String>,
    /// How long JetStream remembers a `Nats-Msg-Id` and drops a second message carrying it.
    /// Two minutes by default.
    pub duplicate_window: Duration,
    /// File (default) or memory.
    pub storage: Storage,
    /// How long messages are kept; zero (the default) keeps them until deleted.
    pub max_age: Duration,
    /// How many copies a cluster keeps; 1 by default.
    pub replicas: usize,
}

impl StreamSettings {
    /// A stream named `name` storing `subjects`, with the defaults.
    pub fn new(name: impl Into<String>, subjects: Vec<String>) -> Self {
        Self {
            name: name.into(),
            subjects,
            duplicate_window: Duration::from_secs(120),
            storage: Storage::File,
            max_age: Duration::ZERO,
            replicas: 1,
        }
    }

    /// The stream of everything published under `prefix`: subjects `<prefix>.>`, named after the
    /// prefix in upper case with every character other than letters, digits, `-` and `_`
    /// replaced by `_` (`acme.orders` gives `ACME_ORDERS`).
    pub fn for_prefix(prefix: &str) -> Self {
        Self::new(stream_name_for(prefix), vec![prefix_filter(prefix)])
    }

    /// Sets the duplicate window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets the storage.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets how long messages are kept (zero: no limit).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets the number of replicas.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The JetStream configuration of these settings.
    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            max_age: self.max_age,
            num_replicas: self.replicas.max(1),
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }
}

/// `<prefix>.>` with the prefix's tokens encoded as [`es_core::integration::subject`] encodes
/// them; `>` alone for an empty prefix.
pub(crate) fn prefix_filter(prefix: &str) -> String {
    if prefix.is_empty() {
        return ">".to_owned();
    }
    let mut filter = String::new();
    for token in prefix.split('.') {
        filter.push_str(&encode_token(token));
        filter.push('.');
    }
    filter.push('>');
    filter
}

/// A stream name made of a prefix: upper case, `_` for anything but letters, digits, `-`, `_`.
pub(crate) fn stream_name_for(prefix: &str) -> String {
    let name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "ES".to_owned()
    } else {
        name
    }
}

/// Creates the stream of `settings`, or updates it to them if it exists (subjects, duplicate
/// window, max age; JetStream refuses to change the storage of an existing stream). Returns
/// the stream's state. Call it at start-up, before a relay publishes: a publish to a subject no
/// stream stores is refused.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Info, NatsError> {
    check_name("stream name", &settings.name)?;
    if settings.subjects.is_empty() {
        return Err(NatsError::Invalid {
            what: "stream subjects",
            value: String::new(),
            reason: "a stream needs at least one subject",
        });
    }
    for subject in &settings.subjects {
        check_filter_subject(subject).map_err(|reason| NatsError::Invalid {
            what: "stream subject",
            value: subject.clone(),
            reason,
        })?;
    }
    jetstream
        .create_or_update_stream(settings.config())
        .await
        .map_err(|source| NatsError::Stream {
            stream: settings.name.clone(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_give_filters_and_names() {
        assert_eq!(prefix_filter("es"), "es.>");
        assert_eq!(prefix_filter("acme.es"), "acme.es.>");
        assert_eq!(prefix_filter("a b.c"), "a%20b.c.>");
        assert_eq!(prefix_filter(""), ">");
        assert_eq!(stream_name_for("acme.es"), "ACME_ES");
        assert_eq!(stream_name_for(""), "ES");
    }
}
