//! The errors of setting JetStream up: connecting, creating streams and consumers.

use es_core::integration::BrokerError;

/// Why connecting to NATS or setting a JetStream stream or consumer up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The NATS server did not answer.
    #[error("connecting to nats at `{url}` failed (is `nats-server -js` running?)")]
    Connect {
        /// The server address tried.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A name or subject that NATS cannot take.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        /// What was given: a stream name, a subject, a consumer name...
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Creating or updating a JetStream stream failed.
    #[error("creating or updating jetstream stream `{stream}` failed")]
    Stream {
        /// The stream's name.
        stream: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Creating or looking up a durable consumer failed.
    #[error("creating durable consumer `{consumer}` on jetstream stream `{stream}` failed")]
    Consumer {
        /// The stream's name.
        stream: String,
        /// The consumer's durable name.
        consumer: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A broker operation failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A transient broker error with the client's error as source.
pub(crate) fn unavailable(
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> BrokerError {
    BrokerError::Unavailable {
        message: message.into(),
        source: Some(Box::new(source)),
    }
}

/// A permanent broker error.
pub(crate) fn rejected(message: impl Into<String>) -> BrokerError {
    BrokerError::Rejected {
        message: message.into(),
    }
}

/// Checks a JetStream stream or consumer name: not empty, only ASCII letters, digits, `-` and
/// `_`. NATS allows more in principle, but a consumer name holding `%` (a percent-encoded
/// projection name) leaves its pulls unanswered on a 2.9 server; [`crate::durable_name`] makes
/// a valid name of any projection name.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), NatsError> {
    if name.is_empty() {
        return Err(NatsError::Invalid {
            what,
            value: name.to_owned(),
            reason: "it is empty",
        });
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(NatsError::Invalid {
            what,
            value: name.to_owned(),
            reason: "names hold only ASCII letters, digits, `-` and `_` (see `durable_name`)",
        });
    }
    Ok(())
}

/// Checks a subject one publishes to: dot-separated non-empty tokens without whitespace or
/// wildcards.
pub(crate) fn check_publish_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err("it has an empty token");
        }
        if token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        {
            return Err("a token holds whitespace, a control character or a wildcard");
        }
    }
    Ok(())
}

/// Checks a subject filter: like a publish subject, with `*` tokens and a final `>` allowed.
pub(crate) fn check_filter_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        if *token == "*" || (*token == ">" && index + 1 == tokens.len()) {
            continue;
        }
        check_publish_subject(token)?;
    }
    Ok(())
}
