//! A peer cluster's UUID, lower-cased once where it enters the agent.
//!
//! Kubernetes writes UIDs in lower case, but a remote's `public.json` may
//! not; the edge filter lower-cases every UUID it compares (`core::edge`),
//! so the agent pins, compares, names resources after and addresses tokens
//! to the lower-cased form only.
//!
//! Its natural home is `multicloud-core` (next to `metadata::is_uuid`, for
//! the filter too); it lives here until `core` takes it.

use multicloud_core::metadata::{is_uuid, ValidPublic};
use std::fmt;

/// A canonical cluster UUID (8-4-4-4-12 hex digits), lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ClusterUuid(String);

/// Read back (the published data plane state) through [`ClusterUuid::parse`].
impl<'de> serde::Deserialize<'de> for ClusterUuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClusterUuid::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Not a canonical UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a cluster UUID (8-4-4-4-12 hex digits)")]
pub struct NotAUuid(pub String);

impl ClusterUuid {
    /// Checks and lower-cases `s`.
    pub fn parse(s: &str) -> Result<ClusterUuid, NotAUuid> {
        if is_uuid(s) {
            Ok(ClusterUuid(s.to_ascii_lowercase()))
        } else {
            Err(NotAUuid(s.to_string()))
        }
    }

    /// The UUID of a validated public document (`PublicMetadata::validate`
    /// checked its form).
    pub fn of(public: &ValidPublic) -> ClusterUuid {
        ClusterUuid(public.doc.cluster_uuid.to_ascii_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ClusterUuid {
    type Err = NotAUuid;
    fn from_str(s: &str) -> Result<ClusterUuid, NotAUuid> {
        ClusterUuid::parse(s)
    }
}

impl fmt::Display for ClusterUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClusterUuid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClusterUuid {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ClusterUuid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_once_lower_case() {
        let u = ClusterUuid::parse("6F9C1C1E-3B7A-4D6E-9A51-1F1F7C1A000A").unwrap();
        assert_eq!(u, "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a");
        assert_eq!(u, "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a".parse::<ClusterUuid>().unwrap());
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a\"");
        assert!(ClusterUuid::parse("u").unwrap_err().to_string().contains("not a cluster UUID"));
    }
}
