//! Stream identity: a stream is named by its tenant, its type and its id.
//!
//! Two streams with the same id are independent when their types differ (an `order` `42` and a
//! `product` `42`) or their tenants differ. A service without tenants never names one: every
//! stream then belongs to [`DEFAULT_TENANT`].

use std::fmt;
use std::sync::Arc;

use crate::contract::{self, InputRule};

/// The tenant of every stream of a service that has no tenants.
pub const DEFAULT_TENANT: &str = "default";

/// Which stream: `(tenant, stream type, stream id)`, borrowed.
///
/// Stores key events, versions and snapshots by all three. [`StreamKey::new`] names a stream of
/// the [default tenant](DEFAULT_TENANT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey<'a> {
    /// The tenant the stream belongs to.
    pub tenant: &'a str,
    /// The stream's type: the aggregate's name.
    pub stream_type: &'a str,
    /// The stream's id within its tenant and type: the aggregate id.
    pub id: &'a str,
}

impl<'a> StreamKey<'a> {
    /// The stream `id` of type `stream_type` in the default tenant.
    pub const fn new(stream_type: &'a str, id: &'a str) -> Self {
        Self {
            tenant: DEFAULT_TENANT,
            stream_type,
            id,
        }
    }

    /// The same stream type and id in `tenant`.
    pub const fn in_tenant(self, tenant: &'a str) -> Self {
        Self { tenant, ..self }
    }

    /// An owned copy.
    pub fn to_owned(self) -> StreamKeyBuf {
        StreamKeyBuf {
            tenant: self.tenant.to_owned(),
            stream_type: self.stream_type.to_owned(),
            id: self.id.to_owned(),
        }
    }
}

impl fmt::Display for StreamKey<'_> {
    /// `order/o-1` in the default tenant, `acme:order/o-1` in tenant `acme`; a long or odd value
    /// is shortened and escaped, so that a hostile id never fills a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tenant != DEFAULT_TENANT {
            write!(f, "{}:", Shown(self.tenant))?;
        }
        write!(f, "{}/{}", Shown(self.stream_type), Shown(self.id))
    }
}

/// Which stream, owned: what errors and records carry.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct StreamKeyBuf {
    /// The tenant the stream belongs to.
    pub tenant: String,
    /// The stream's type.
    pub stream_type: String,
    /// The stream's id.
    pub id: String,
}

impl StreamKeyBuf {
    /// The borrowed key.
    pub fn as_key(&self) -> StreamKey<'_> {
        StreamKey {
            tenant: &self.tenant,
            stream_type: &self.stream_type,
            id: &self.id,
        }
    }
}

impl fmt::Display for StreamKeyBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_key().fmt(f)
    }
}

impl From<StreamKey<'_>> for StreamKeyBuf {
    fn from(key: StreamKey<'_>) -> Self {
        key.to_owned()
    }
}

/// A value shown in a message: at most [`SHOWN_CHARS`] characters, control characters escaped.
struct Shown<'a>(&'a str);

/// How many characters of a name or id a message shows.
const SHOWN_CHARS: usize = 64;

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(SHOWN_CHARS) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_str(c.encode_utf8(&mut [0; 4]))?;
            }
        }
        if chars.next().is_some() {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Shows `value` in a message as [`StreamKey`]'s `Display` does: shortened and escaped.
pub(crate) fn shown(value: &str) -> impl fmt::Display + '_ {
    Shown(value)
}

/// A checked tenant id: what a multi-tenant service scopes repositories and projections with.
///
/// Cheap to clone. [`Tenant::new`] refuses what no store accepts (see the input contract in
/// [`contract`](crate::contract)): an empty id, one longer than
/// [`MAX_NAME_BYTES`](crate::contract::MAX_NAME_BYTES) bytes, or one holding a NUL character.
///
/// ```
/// use es_core::Tenant;
///
/// let acme = Tenant::new("acme")?;
/// assert_eq!(acme.as_str(), "acme");
/// assert!(Tenant::new("").is_err());
/// # Ok::<(), es_core::InvalidTenant>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

/// A tenant id that no store accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant `{}`: {rule}", shown(.tenant))]
pub struct InvalidTenant {
    /// The id given.
    pub tenant: String,
    /// The rule it breaks.
    pub rule: InputRule,
}

impl Tenant {
    /// A tenant id, checked.
    pub fn new(tenant: impl AsRef<str>) -> Result<Self, InvalidTenant> {
        let tenant = tenant.as_ref();
        contract::check_name(contract::Field::Tenant, tenant).map_err(|rule| InvalidTenant {
            tenant: tenant.to_owned(),
            rule,
        })?;
        Ok(Self(Arc::from(tenant)))
    }

    /// The [default tenant](DEFAULT_TENANT).
    pub fn default_tenant() -> Self {
        Self(Arc::from(DEFAULT_TENANT))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Tenant {
    type Err = InvalidTenant;

    fn from_str(tenant: &str) -> Result<Self, Self::Err> {
        Self::new(tenant)
    }
}

impl AsRef<str> for Tenant {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Which part of the global log a reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogScope<'a> {
    /// Every tenant's events: for cross-tenant projections and relays.
    #[default]
    AllTenants,
    /// One tenant's events only.
    Tenant(&'a str),
}

impl<'a> LogScope<'a> {
    /// The log of `tenant`, or of every tenant for `None`: what a runner or relay scoped with
    /// `for_tenant` (or not) reads.
    pub(crate) fn of(tenant: Option<&'a Tenant>) -> Self {
        match tenant {
            None => LogScope::AllTenants,
            Some(tenant) => LogScope::Tenant(tenant.as_str()),
        }
    }

    /// The key of `name`'s checkpoint and lock in this scope: `name`, or `name@<tenant>`.
    pub(crate) fn key(self, name: &str) -> String {
        match self {
            LogScope::AllTenants => name.to_owned(),
            LogScope::Tenant(tenant) => format!("{name}@{tenant}"),
        }
    }
}

impl LogScope<'_> {
    /// Whether an event of `tenant` is in scope.
    pub fn includes(self, tenant: &str) -> bool {
        match self {
            LogScope::AllTenants => true,
            LogScope::Tenant(only) => only == tenant,
        }
    }

    /// The tenant, when the scope is one tenant.
    pub fn tenant(self) -> Option<String> {
        match self {
            LogScope::AllTenants => None,
            LogScope::Tenant(tenant) => Some(tenant.to_owned()),
        }
    }
}

impl fmt::Display for LogScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogScope::AllTenants => f.write_str("all tenants"),
            LogScope::Tenant(tenant) => write!(f, "tenant `{}`", shown(tenant)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_display_short_and_escaped() {
        assert_eq!(StreamKey::new("order", "o-1").to_string(), "order/o-1");
        assert_eq!(
            StreamKey::new("order", "o-1").in_tenant("acme").to_string(),
            "acme:order/o-1"
        );
        let long = "x".repeat(10_000);
        let shown = StreamKey::new("order", &long).to_string();
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("(10000 bytes)"));
        assert_eq!(
            StreamKey::new("order", "a\nb\0").to_string(),
            "order/a\\nb\\u{0}"
        );
    }

    #[test]
    fn tenants_are_checked() {
        assert!(Tenant::new("acme").is_ok());
        assert!(Tenant::new("").is_err());
        assert!(Tenant::new("a\0b").is_err());
        assert!(Tenant::new("t".repeat(256)).is_err());
        assert_eq!(Tenant::default().as_str(), DEFAULT_TENANT);
    }
}
