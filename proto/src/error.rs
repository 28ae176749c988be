//! What a builder says when a resource cannot be built or must not be pushed.

/// The peer name used in errors about the local cluster's own inputs.
pub const LOCAL: &str = "(local)";

/// A resource that cannot be built or must not be pushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("peer {peer}: {field}: not a usable root CA: {cause}")]
    Root { peer: String, field: String, cause: String },
    #[error("peer {peer}: {field}: {cause}")]
    Address { peer: String, field: String, cause: String },
    #[error("peer {peer}: {field}: port 0 is not a port")]
    Port { peer: String, field: String },
    #[error("peer {peer}: {field}: {cause}")]
    Name { peer: String, field: String, cause: String },
    /// A built resource missing a part Envoy needs, or two resources of one name.
    #[error("peer {peer}: {field}: {cause}")]
    Malformed { peer: String, field: String, cause: String },
}

impl BuildError {
    /// The peer and the field every error names.
    fn at(&self) -> (&str, &str) {
        match self {
            BuildError::Root { peer, field, .. }
            | BuildError::Address { peer, field, .. }
            | BuildError::Port { peer, field }
            | BuildError::Name { peer, field, .. }
            | BuildError::Malformed { peer, field, .. } => (peer, field),
        }
    }

    pub fn peer(&self) -> &str {
        self.at().0
    }

    pub fn field(&self) -> &str {
        self.at().1
    }
}

pub(crate) fn name_err(peer: &str, field: impl Into<String>, cause: impl Into<String>) -> BuildError {
    BuildError::Name { peer: peer.into(), field: field.into(), cause: cause.into() }
}

pub(crate) fn malformed(peer: &str, field: impl Into<String>, cause: impl Into<String>) -> BuildError {
    BuildError::Malformed { peer: peer.into(), field: field.into(), cause: cause.into() }
}

pub(crate) fn local_err(field: impl Into<String>, cause: impl Into<String>) -> BuildError {
    BuildError::Address { peer: LOCAL.into(), field: field.into(), cause: cause.into() }
}
