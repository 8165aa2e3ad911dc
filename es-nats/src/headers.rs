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

/// Like [`to_header_map`], taking the list: known names (es-core's) cost no allocation and values
/// move into the map without a copy. For the publisher's hot path.
pub(crate) fn into_header_map(list: Vec<(String, String)>) -> Result<HeaderMap, BrokerError> {
    let mut map = HeaderMap::new();
    for (name, value) in list {
        let header = match known_name(&name) {
            Some(header) => header,
            None => HeaderName::from_str(&name).map_err(|_| {
                rejected(format!(
                    "header name `{}` is not valid in nats",
                    name.escape_debug()
                ))
            })?,
        };
        if value.contains(['\r', '\n']) {
            return Err(rejected(format!(
                "value of header `{name}` holds a line break, which nats cannot carry"
            )));
        }
        // Checked above: the conversion's own check passes.
        map.append(header, HeaderValue::from(value));
    }
    Ok(map)
}

/// es-core's header names, made once.
static KNOWN: [HeaderName; 13] = [
    HeaderName::from_static(headers::MSG_ID),
    HeaderName::from_static(headers::EVENT_ID),
    HeaderName::from_static(headers::TENANT),
    HeaderName::from_static(headers::STREAM_TYPE),
    HeaderName::from_static(headers::STREAM_ID),
    HeaderName::from_static(headers::STREAM_VERSION),
    HeaderName::from_static(headers::POSITION),
    HeaderName::from_static(headers::EVENT_TYPE),
    HeaderName::from_static(headers::SCHEMA_VERSION),
    HeaderName::from_static(headers::CORRELATION_ID),
    HeaderName::from_static(headers::CAUSATION_ID),
    HeaderName::from_static(headers::RECORDED_AT),
    HeaderName::from_static(headers::CONTENT_TYPE),
];

fn known_name(name: &str) -> Option<HeaderName> {
    KNOWN
        .iter()
        .find(|known| AsRef::<str>::as_ref(*known) == name)
        .cloned()
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
    fn the_owned_conversion_gives_the_same_map() {
        let mut list: Vec<(String, String)> = headers::ALL
            .iter()
            .map(|name| ((*name).to_owned(), format!("v-{name}")))
            .collect();
        list.push(("X-Other".to_owned(), "x".to_owned()));
        assert_eq!(
            into_header_map(list.clone()).unwrap(),
            to_header_map(&list).unwrap()
        );
        assert!(into_header_map(vec![("a:b".to_owned(), "v".to_owned())]).is_err());
        assert!(into_header_map(vec![("A".to_owned(), "v\n".to_owned())]).is_err());
        assert!(into_header_map(vec![(headers::EVENT_ID.to_owned(), "v\r".to_owned())]).is_err());
        // Every header es-core sets has its name made once.
        assert!(headers::ALL.iter().all(|name| known_name(name).is_some()));
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
