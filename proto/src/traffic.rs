//! Cross-cluster traffic: what sidecars need to call a service by its usual
//! name wherever it runs, and what the gateway's mesh port needs to let
//! peers in. Pure builders, no I/O; every input is checked before a
//! resource is returned. `docs/traffic.md` tells the story and the security
//! of each mode.
//!
//! **Sidecars (namespace sameness).** For every service port a peer exports,
//! one EDS cluster `outbound|<port>||<host>|multicloud` ([`sameness_cluster_name`])
//! holds this cluster's own endpoints of that service *and* each exporting
//! peer's gateways, so one name reaches every copy:
//! - [`Sameness::Balanced`] (the default, like Istio's multi-network
//!   meshes): all at priority 0, a local endpoint weighs 1, a peer weighs its
//!   ready endpoints (spread over its gateways), so load follows capacity;
//! - [`Sameness::LocalFirst`]: local endpoints at priority 0, peers at
//!   priority 1; peers serve only when local endpoints are missing or
//!   unhealthy (Envoy's priority spill-over).
//!
//! Either way an outlier detector ejects a dead gateway (connect failures
//! and 502/503/504 count as gateway failures) and lets it back after the
//! ejection time. Each endpoint's TLS is chosen by endpoint metadata
//! (`transport_socket_matches`): local endpoints are validated against the
//! **local root only** ([`LOCAL_ROOT_SECRET`]), a peer's gateway or workloads
//! against **that peer's root only**, so no CA can answer for another
//! cluster's copy of a service.
//!
//! What the caller sends a peer depends on the peer's [`MeshMode`], read from
//! its private document: Istio's SNI `outbound_.<port>_._.<host>` for
//! [`MeshMode::Passthrough`], [`peer_sni`] of the *caller's* cluster UUID
//! for [`MeshMode::IdentityEnforcing`] (the peer's gateway picks the filter
//! chain, and with it the one root it validates the caller against, by it).
//!
//! **Gateway (mesh port).** [`gateway_resources`]: the listener
//! ([`crate::listeners`]), its clusters and their load assignments.
//!
//! The builders live by resource kind ([`crate::clusters`],
//! [`crate::endpoints`], [`crate::listeners`], [`crate::routes`],
//! [`crate::secrets`]); this module assembles them and re-exports what the
//! agent uses.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use multicloud_core::metadata::{ExportedService, MeshMode};
use multicloud_core::naming::sni;

use crate::clusters::{gateway_local_cluster, upstream_tls, ALPN};
use crate::endpoints::gateway_local_load_assignment;
use crate::error::BuildError;
use crate::inputs::{check_local, exported_ports, PeerView};
use crate::listeners::{mesh_listener, passthrough_chain, peer_chain};
use crate::parts::tls_socket;
use crate::routes::local_virtual_hosts;
use crate::source::{ClientIdentity, Sources};

pub use crate::clusters::{sameness_cluster, PEER_MATCH_KEY};
pub use crate::endpoints::sameness_load_assignment;
pub use crate::inputs::{exports_by_port, LocalPort, TrafficPeer};
pub use crate::listeners::{MESH_FILTER_NAME, MESH_LISTENER};
pub use crate::secrets::local_root_secret;
pub use multicloud_core::naming::{gateway_local_cluster_name, peer_sni, sameness_cluster_name, Sameness, LOCAL_ROOT_SECRET};

/// The sidecars' merged clusters and their load assignments, one per
/// service port some peer exports. `peers` must be the peers whose traffic
/// resources are wanted (private metadata known, gateway enabled).
pub fn sameness_resources(
    local_uuid: &str,
    local: &[LocalPort],
    peers: &[TrafficPeer],
    client: &ClientIdentity,
    policy: Sameness,
) -> Result<(Vec<Cluster>, Vec<ClusterLoadAssignment>), BuildError> {
    let (mut clusters, mut cla) = (Vec::new(), Vec::new());
    for ((host, port), exporters) in exports_by_port(peers) {
        clusters.push(sameness_cluster(local_uuid, host, port, &exporters, client)?);
        cla.push(sameness_load_assignment(host, port, local, &exporters, policy)?);
    }
    Ok((clusters, cla))
}

/// What the gateway's mesh port serves.
pub struct GatewayInputs<'a> {
    pub mode: MeshMode,
    /// Where the listener binds.
    pub listen: std::net::SocketAddr,
    /// The services this cluster exports.
    pub exported: &'a [ExportedService],
    pub local: &'a [LocalPort<'a>],
    /// Identity-enforcing: one chain per peer.
    pub peers: &'a [PeerView<'a>],
    /// The gateway's own workload certificate (identity-enforcing: presented
    /// to peers and to the local sidecars).
    pub client: ClientIdentity<'a>,
}

/// The mesh listener and its clusters and load assignments.
pub fn gateway_resources(inputs: &GatewayInputs) -> Result<(Listener, Vec<Cluster>, Vec<ClusterLoadAssignment>), BuildError> {
    check_local(inputs.local)?;
    let ports = exported_ports(inputs.exported)?;
    let (mut clusters, mut cla, mut chains) = (Vec::new(), Vec::new(), Vec::new());
    match inputs.mode {
        MeshMode::Passthrough => {
            for (host, port) in &ports {
                let name = sni(host, *port);
                clusters.push(gateway_local_cluster(name.clone(), None));
                cla.push(gateway_local_load_assignment(name.clone(), inputs.local, host, *port));
                chains.push(passthrough_chain(name));
            }
        }
        MeshMode::IdentityEnforcing => {
            let sources = Sources::for_client(&inputs.client);
            let mut routes = Vec::new();
            for (host, port) in &ports {
                let name = gateway_local_cluster_name(host, *port);
                let tls = upstream_tls(sni(host, *port), &ALPN, &inputs.client, &sources, LOCAL_ROOT_SECRET);
                clusters.push(gateway_local_cluster(name.clone(), Some(tls_socket(tls))));
                cla.push(gateway_local_load_assignment(name.clone(), inputs.local, host, *port));
                routes.push((*host, *port, name));
            }
            let vhosts = local_virtual_hosts(&routes);
            let mut uuids = std::collections::HashSet::new();
            for p in inputs.peers {
                if !uuids.insert(p.cluster_uuid.to_ascii_lowercase()) {
                    return Err(BuildError::Malformed {
                        peer: p.name.into(),
                        field: "clusterUUID".into(),
                        cause: "another peer has this cluster UUID".into(),
                    });
                }
                chains.push(peer_chain(p, &inputs.client, &sources, vhosts.clone()));
            }
        }
    }
    Ok((mesh_listener(inputs.listen, chains), clusters, cla))
}

#[cfg(test)]
mod tests;
