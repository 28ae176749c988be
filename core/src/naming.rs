//! The names the project gives things on the data plane: SNI, cluster names,
//! SDS secret names, and the sameness policy of a service's copies. One
//! place, so that the resources the agent serves (built in
//! `multicloud-proto`), the filter's configuration and the test bed agree.
//!
//! - Remote clusters are `outbound|<port>||<hostname>|multicloud-<peer>`
//!   ([`remote_cluster_name`]): istiod already programs
//!   `outbound|<port>||<hostname>` for the local copy of the same service
//!   (same cluster domain, so same hostname), and two CDS resources of one
//!   name replace each other. The fifth field keeps the remote copy apart
//!   from istiod's and each peer's apart from the others'; Istio's own
//!   cluster-name parsers read the first four fields and ignore the rest, so
//!   stats and telemetry still see the service.
//! - SNI is Istio's `outbound_.<port>_._.<hostname>` ([`sni`]), what the
//!   remote gateway's `AUTO_PASSTHROUGH` listener routes on; an
//!   identity-enforcing gateway is sent [`peer_sni`] of the caller's cluster.

/// SDS name of the local root plus every peer's root (the workloads'
/// inbound side, which must accept callers from every peer).
pub const TRUST_BUNDLE_SECRET: &str = "multicloud-trust-bundle";
/// SDS name of the local root alone: what local endpoints are validated against.
pub const LOCAL_ROOT_SECRET: &str = "multicloud-local-root";
/// SDS name of the API proxy's own credential (a generic secret the
/// gateway's credential injector attaches as `Authorization: Bearer ...`).
pub const API_PROXY_CREDENTIAL_SECRET: &str = "multicloud-api-proxy-credential";
/// What [`peer_root_secret_name`] puts before the peer's cluster UUID.
pub const PEER_ROOT_SECRET_PREFIX: &str = "multicloud-peer-root~";
/// What [`remote_cluster_name`] puts before the peer's name.
pub const REMOTE_CLUSTER_PEER_MARK: &str = "|multicloud-";

/// `istio-remote-secret-<object>`: the Kubernetes Secret holding Istio's
/// remote secret (a kubeconfig for the peer's API proxy) of the
/// IstioMulticloud object `object`, named as `istioctl create-remote-secret` does.
pub fn remote_secret_name(object: &str) -> String {
    format!("istio-remote-secret-{object}")
}

/// `multicloud-peer-root~<uuid>`: the SDS secret holding only that peer's root.
pub fn peer_root_secret_name(cluster_uuid: &str) -> String {
    format!("{PEER_ROOT_SECRET_PREFIX}{cluster_uuid}")
}

/// `outbound|<port>||<hostname>|multicloud-<peer>`; see the module docs for
/// why it is not Istio's `outbound|<port>||<hostname>`.
pub fn remote_cluster_name(peer: &str, hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}{REMOTE_CLUSTER_PEER_MARK}{peer}")
}

/// The peer a [`remote_cluster_name`] names, if it is one.
pub fn remote_cluster_peer(cluster_name: &str) -> Option<&str> {
    cluster_name.rsplit_once(REMOTE_CLUSTER_PEER_MARK).map(|(_, p)| p)
}

/// Istio's SNI for a service port: `outbound_.<port>_._.<hostname>`.
pub fn sni(hostname: &str, port: u16) -> String {
    format!("outbound_.{port}_._.{hostname}")
}

/// The SNI a caller in cluster `caller_uuid` sends an identity-enforcing gateway.
pub fn peer_sni(caller_uuid: &str) -> String {
    format!("{}.peer.multicloud", caller_uuid.to_ascii_lowercase())
}

/// `outbound|<port>||<host>|multicloud`: the merged cluster sidecars call.
pub fn sameness_cluster_name(hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}|multicloud")
}

/// `outbound|<port>||<host>|local`: the identity-enforcing gateway's route
/// to the local endpoints (a peer named `local` would be `|multicloud-local`).
pub fn gateway_local_cluster_name(hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}|local")
}

/// How a service's local and remote copies share its calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Sameness {
    /// All copies at one priority, weighted by capacity (like Istio's
    /// multi-network meshes).
    #[default]
    Balanced,
    /// Local endpoints first; peers only when local ones are missing or unhealthy.
    LocalFirst,
}

impl std::str::FromStr for Sameness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "balanced" | "Balanced" => Ok(Sameness::Balanced),
            "local-first" | "LocalFirst" => Ok(Sameness::LocalFirst),
            other => Err(format!("{other:?} is not a sameness policy (balanced | local-first)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_cluster_names_give_their_peer_back() {
        let name = remote_cluster_name("b", "foo.abc.svc.cluster.local", 80);
        assert_eq!(remote_cluster_peer(&name), Some("b"));
        assert_eq!(remote_cluster_peer(&sameness_cluster_name("foo.abc.svc.cluster.local", 80)), None);
        assert_eq!(peer_sni("0A0A0A0A-0000-4000-8000-00000000000A"), "0a0a0a0a-0000-4000-8000-00000000000a.peer.multicloud");
    }
}
