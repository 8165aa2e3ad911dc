//! Between es-core's [`Message`] headers (an ordered list) and NATS's header map.

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use es_core::integration::{BrokerError, headers};
use std::str::FromStr;

use crate::error::rejected;

/// The NATS header map of an ordered header list; a name or value NATS cannot carry (a colon or
/// a control character in a name, a line break in a value) is an error, never a panic.
pub(crate) fn to_header_map(list: &[(String, String)]) -> Result<HeaderMap, BrokerError> {
    let mut map = HeaderMap::new();
    for (name, value) in list {
        let header = HeaderName::from_str(name).map_err(|_| {
            rejected(format!(
                "header name `{}` is not valid in nats",
                name.escape_debug()
            ))
        })?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            rejected(format!(
                "value of header `{name}` holds a line break, which nats cannot carry"
            ))
        })?;
        map.append(header, value);
    }
    Ok(map)
}

/// The ordered header list of a NATS header map: es-core's headers first, in
/// [`headers::ALL`]'s order, then the others by name (NATS does not keep the order). NATS's own
/// stream bookkeeping headers (`Nats-Stream`, `Nats-Sequence`, ...) of a direct get are left out,
/// `Nats-Msg-Id` is kept.
pub(crate) fn from_header_map(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else {
        return Vec::new();
    };
    let mut list: Vec<(usize, String, String)> = Vec::new();
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        if is_bookkeeping(name) {
            continue;
        }
        let rank = headers::ALL
            .iter()
            .position(|known| known.eq_ignore_ascii_case(name))
            .unwrap_or(headers::ALL.len());
        for value in values {
            list.push((rank, name.to_owned(), value.as_str().to_owned()));
        }
    }
    list.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    list.into_iter()
        .map(|(_, name, value)| (name, value))
        .collect()
}

/// Headers JetStream adds to a message read back from a stream.
fn is_bookkeeping(name: &str) -> bool {
    [
        "Nats-Stream",
        "Nats-Sequence",
        "Nats-Time-Stamp",
        "Nats-Subject",
        "Nats-Last-Sequence",
        "Nats-Num-Pending",
    ]
    .iter()
    .any(|known| known.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_to_nats_and_back_with_es_core_headers_first() {
        let list = vec![
            ("X-Custom".to_owned(), "1".to_owned()),
            (headers::EVENT_TYPE.to_owned(), "Placed".to_owned()),
            (headers::MSG_ID.to_owned(), "abc".to_owned()),
        ];
        let map = to_header_map(&list).unwrap();
        let back = from_header_map(Some(&map));
        assert_eq!(
            back,
            vec![
                (headers::MSG_ID.to_owned(), "abc".to_owned()),
                (headers::EVENT_TYPE.to_owned(), "Placed".to_owned()),
                ("X-Custom".to_owned(), "1".to_owned()),
            ]
        );
    }

    #[test]
    fn invalid_header_names_and_values_are_errors_not_panics() {
        let bad_name = vec![("a:b".to_owned(), "v".to_owned())];
        assert!(!to_header_map(&bad_name).unwrap_err().is_transient());
        let bad_value = vec![("A".to_owned(), "secret\r\nvalue".to_owned())];
        let error = to_header_map(&bad_value).unwrap_err().to_string();
        assert!(error.contains("header `A`"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
