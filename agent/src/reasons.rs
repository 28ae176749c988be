//! The words conditions and metrics use, as types: why a condition is what
//! it is ([`Reason`], CamelCase in `status.conditions[].reason`), which
//! document a fetch was for ([`Document`]) and how it ended ([`FetchResult`],
//! the `result` label of `multicloud_agent_fetch_total`), and why the xDS
//! port turned a client away ([`RefusalReason`], counted as [`RefusalCount`]
//! under `multicloud_agent_xds_refusals_total{reason}`). Every label string
//! comes from these enums; docs/agent.md lists the same reasons.

/// A condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The document was fetched and validated.
    Fetched,
    /// Ready: public and private metadata are current.
    Federated,
    /// Private: there is no public document (hence no remote UUID) yet.
    WaitingForPublicMetadata,
    /// Ready: nothing has failed, nothing has completed yet.
    Pending,
    /// Public: the remote reports another cluster UUID than the pinned one.
    RemoteUuidChanged,
    // Why a fetch (or building its client) failed: `crate::exchange::FetchError::reason`.
    EndpointInvalid,
    TrustInvalid,
    ClientBuildFailed,
    TokenInvalid,
    ConnectFailed,
    Timeout,
    TlsVerificationFailed,
    TlsHandshakeFailed,
    RedirectRefused,
    HttpStatus,
    Unauthorized,
    BodyTooLarge,
    MalformedJson,
    InvalidDocument,
    RequestFailed,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 20] = [
        Reason::Fetched,
        Reason::Federated,
        Reason::WaitingForPublicMetadata,
        Reason::Pending,
        Reason::RemoteUuidChanged,
        Reason::EndpointInvalid,
        Reason::TrustInvalid,
        Reason::ClientBuildFailed,
        Reason::TokenInvalid,
        Reason::ConnectFailed,
        Reason::Timeout,
        Reason::TlsVerificationFailed,
        Reason::TlsHandshakeFailed,
        Reason::RedirectRefused,
        Reason::HttpStatus,
        Reason::Unauthorized,
        Reason::BodyTooLarge,
        Reason::MalformedJson,
        Reason::InvalidDocument,
        Reason::RequestFailed,
    ];

    /// The reason whose [`Reason::as_str`] is `s`.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The CamelCase reason in `status.conditions`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Fetched => "Fetched",
            Reason::Federated => "Federated",
            Reason::WaitingForPublicMetadata => "WaitingForPublicMetadata",
            Reason::Pending => "Pending",
            Reason::RemoteUuidChanged => "RemoteUUIDChanged",
            Reason::EndpointInvalid => "EndpointInvalid",
            Reason::TrustInvalid => "TrustInvalid",
            Reason::ClientBuildFailed => "ClientBuildFailed",
            Reason::TokenInvalid => "TokenInvalid",
            Reason::ConnectFailed => "ConnectFailed",
            Reason::Timeout => "Timeout",
            Reason::TlsVerificationFailed => "TlsVerificationFailed",
            Reason::TlsHandshakeFailed => "TlsHandshakeFailed",
            Reason::RedirectRefused => "RedirectRefused",
            Reason::HttpStatus => "HttpStatus",
            Reason::Unauthorized => "Unauthorized",
            Reason::BodyTooLarge => "BodyTooLarge",
            Reason::MalformedJson => "MalformedJson",
            Reason::InvalidDocument => "InvalidDocument",
            Reason::RequestFailed => "RequestFailed",
        }
    }

    /// The snake_case `result` label a failed fetch with this reason is
    /// counted under (`RemoteUUIDChanged` is counted as `uuid_changed`).
    pub const fn metric_label(self) -> &'static str {
        match self {
            Reason::Fetched => "fetched",
            Reason::Federated => "federated",
            Reason::WaitingForPublicMetadata => "waiting_for_public_metadata",
            Reason::Pending => "pending",
            Reason::RemoteUuidChanged => "uuid_changed",
            Reason::EndpointInvalid => "endpoint_invalid",
            Reason::TrustInvalid => "trust_invalid",
            Reason::ClientBuildFailed => "client_build_failed",
            Reason::TokenInvalid => "token_invalid",
            Reason::ConnectFailed => "connect_failed",
            Reason::Timeout => "timeout",
            Reason::TlsVerificationFailed => "tls_verification_failed",
            Reason::TlsHandshakeFailed => "tls_handshake_failed",
            Reason::RedirectRefused => "redirect_refused",
            Reason::HttpStatus => "http_status",
            Reason::Unauthorized => "unauthorized",
            Reason::BodyTooLarge => "body_too_large",
            Reason::MalformedJson => "malformed_json",
            Reason::InvalidDocument => "invalid_document",
            Reason::RequestFailed => "request_failed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which metadata document (the `document` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Document {
    Public,
    Private,
}

impl Document {
    pub const ALL: [Document; 2] = [Document::Public, Document::Private];

    pub const fn as_str(self) -> &'static str {
        match self {
            Document::Public => "public",
            Document::Private => "private",
        }
    }
}

/// How one fetch ended (the `result` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FetchResult {
    Ok,
    Failed(Reason),
}

impl FetchResult {
    /// `ok`, or the failure's [`Reason::metric_label`].
    pub const fn as_str(self) -> &'static str {
        match self {
            FetchResult::Ok => "ok",
            FetchResult::Failed(r) => r.metric_label(),
        }
    }
}

/// Why the xDS port turned a client away; the label of
/// `multicloud_agent_xds_refusals_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The TLS client sent no certificate.
    NoClientCertificate,
    /// The certificate does not chain to this cluster's root (another
    /// cluster's CA, self-signed, expired, wrong usage, ...).
    UntrustedCertificate,
    /// Any other TLS failure (not TLS at all, closed mid-handshake, ...).
    HandshakeFailed,
    HandshakeTimeout,
    /// The agent does not know this cluster's root yet (no local facts read).
    NoLocalRoot,
    /// The certificate chains to the root but names no `spiffe://` identity.
    NoSpiffeId,
    /// The node claims a group (e.g. `gateway`) its identity may not join.
    GroupNotAllowed,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::NoClientCertificate,
        RefusalReason::UntrustedCertificate,
        RefusalReason::HandshakeFailed,
        RefusalReason::HandshakeTimeout,
        RefusalReason::NoLocalRoot,
        RefusalReason::NoSpiffeId,
        RefusalReason::GroupNotAllowed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NoClientCertificate => "no_client_certificate",
            RefusalReason::UntrustedCertificate => "untrusted_certificate",
            RefusalReason::HandshakeFailed => "handshake_failed",
            RefusalReason::HandshakeTimeout => "handshake_timeout",
            RefusalReason::NoLocalRoot => "no_local_root",
            RefusalReason::NoSpiffeId => "no_spiffe_id",
            RefusalReason::GroupNotAllowed => "group_not_allowed",
        }
    }
}

/// How many xDS clients were turned away for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalCount {
    pub reason: RefusalReason,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_labels_are_distinct_and_well_formed() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.metric_label()).collect();
        for (n, l) in names.iter().zip(&labels) {
            assert!(n.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && n.chars().all(|c| c.is_ascii_alphanumeric()), "{n}");
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
        }
        names.sort_unstable();
        names.dedup();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!((names.len(), labels.len()), (Reason::ALL.len(), Reason::ALL.len()));
        assert!(!labels.contains(&FetchResult::Ok.as_str()));
    }

    /// docs/agent.md's reason table names every reason the agent sets.
    #[test]
    fn the_documented_reasons_are_the_agents() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent.md")).unwrap();
        for r in Reason::ALL {
            assert!(doc.contains(&format!("`{}`", r.as_str())), "docs/agent.md does not list the reason {r}");
        }
    }

    #[test]
    fn refusal_labels_are_distinct() {
        let labels: std::collections::BTreeSet<&str> = RefusalReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
    }
}
