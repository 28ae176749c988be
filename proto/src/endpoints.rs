//! EDS: the load assignments of the clusters in [`crate::clusters`].
//!
//! - A remote cluster's: the peer's ingress gateways (duplicates once),
//!   weighted by [`gateway_weights`], in locality `multicloud/<peer>`.
//! - A merged cluster's: local endpoints (locality `multicloud/local`) and
//!   each exporter's gateways, tagged for their TLS (`PEER_MATCH_KEY`), at
//!   priority 0, or peers at 1 for [`Sameness::LocalFirst`].
//! - A gateway's local cluster's: the local endpoints.
//!
//! Every address is an IP literal (EDS does not resolve names), every port
//! non-zero, every weight at least 1.

use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use multicloud_core::metadata::ExportedService;
use multicloud_core::naming::{remote_cluster_name, remote_cluster_peer, sameness_cluster_name, Sameness};

use crate::clusters::PEER_MATCH_KEY;
use crate::error::{malformed, name_err, BuildError};
use crate::inputs::{check_gateways, check_local, check_services, LocalPort, PeerView, TrafficPeer};
use crate::parts::{metadata, socket, struct_of, u32v};

/// Locality region of every remote endpoint (the zone is the peer's name).
pub const LOCALITY_REGION: &str = "multicloud";
/// The namespace Envoy matches `transport_socket_matches` against.
const SOCKET_MATCH_NAMESPACE: &str = "envoy.transport_socket_match";

/// Per-gateway weights for a peer: the peer as a whole weighs
/// `W = max(1, readyEndpoints)` (the workloads behind it, so that it counts
/// in proportion to them wherever its endpoints meet others': locality-
/// weighted balancing, weighted clusters, merged endpoint sets), split over
/// its `G` gateways as evenly as integers allow (the first `W mod G` get one
/// more). Envoy refuses weight 0, so every gateway weighs at least 1 and the
/// sum is `max(W, G)`; a peer reporting 0 ready endpoints is still reachable
/// with weight 1 (its count may lag, and the outlier detector judges it).
pub fn gateway_weights(ready_endpoints: u32, gateways: usize) -> Vec<u32> {
    if gateways == 0 {
        return Vec::new();
    }
    let total = ready_endpoints.max(1) as u64;
    let g = gateways as u64;
    (0..g).map(|i| (total / g + u64::from(i < total % g)).clamp(1, u64::from(u32::MAX)) as u32).collect()
}

fn lb_endpoint(address: Address, weight: u32, metadata: Option<Metadata>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint { address: Some(address), ..Default::default() })),
        load_balancing_weight: u32v(weight),
        metadata,
        ..Default::default()
    }
}

/// An endpoint of a merged or gateway-local cluster; `match_peer` chooses
/// the peer's TLS, `network` is Istio's endpoint network.
fn tagged_endpoint(sa: std::net::SocketAddr, weight: u32, match_peer: Option<&str>, network: Option<&str>) -> LbEndpoint {
    let mut filter_metadata = HashMap::new();
    if let Some(peer) = match_peer {
        filter_metadata.insert(SOCKET_MATCH_NAMESPACE.to_string(), struct_of(&[(PEER_MATCH_KEY, peer)]));
    }
    if let Some(n) = network {
        filter_metadata.insert("istio".to_string(), struct_of(&[("network", n)]));
    }
    let metadata = (!filter_metadata.is_empty()).then(|| Metadata { filter_metadata, ..Default::default() });
    lb_endpoint(socket(&sa.ip().to_string(), sa.port()), weight.max(1), metadata)
}

/// The ready local endpoints of `host:port`.
fn local_endpoints(local: &[LocalPort], host: &str, port: u16) -> Vec<LbEndpoint> {
    local
        .iter()
        .filter(|l| l.hostname == host && l.port == port)
        .flat_map(|l| l.addresses.iter())
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|sa| tagged_endpoint(sa, 1, None, None))
        .collect()
}

/// One `ClusterLoadAssignment` per cluster of
/// [`crate::clusters::remote_clusters`]: the peer's ingress gateways
/// (duplicates once), weighted by [`gateway_weights`], in locality
/// `{region: "multicloud", zone: <peer name>}`, each endpoint carrying
/// Istio's `istio: {network: <peer network>}` metadata.
pub fn remote_endpoints(peer: &PeerView) -> Result<Vec<ClusterLoadAssignment>, BuildError> {
    check_services(peer)?;
    let gateways = check_gateways(peer)?;
    let mut out = Vec::new();
    for s in peer.services {
        let weights = gateway_weights(s.ready_endpoints, gateways.len());
        let lb_endpoints: Vec<LbEndpoint> = gateways
            .iter()
            .zip(&weights)
            .map(|(g, w)| lb_endpoint(socket(&g.address, g.port), *w, Some(metadata("istio", &[("network", peer.network)]))))
            .collect();
        for p in &s.ports {
            let cla = ClusterLoadAssignment {
                cluster_name: remote_cluster_name(peer.name, &s.hostname, p.port),
                endpoints: vec![LocalityLbEndpoints {
                    locality: Some(Locality { region: LOCALITY_REGION.into(), zone: peer.name.into(), ..Default::default() }),
                    lb_endpoints: lb_endpoints.clone(),
                    load_balancing_weight: u32v(s.ready_endpoints.max(1)),
                    ..Default::default()
                }],
                ..Default::default()
            };
            validate_load_assignment(&cla)?;
            out.push(cla);
        }
    }
    Ok(out)
}

/// A remote load assignment as Envoy must get it: named, at least one
/// endpoint, each an IP literal with a non-zero port and a non-zero weight.
/// The peer in errors is the locality's zone.
pub fn validate_load_assignment(cla: &ClusterLoadAssignment) -> Result<(), BuildError> {
    let peer = cla
        .endpoints
        .iter()
        .find_map(|l| l.locality.as_ref().map(|l| l.zone.clone()).filter(|z| !z.is_empty()))
        .or_else(|| remote_cluster_peer(&cla.cluster_name).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let peer = peer.as_str();
    if cla.cluster_name.is_empty() {
        return Err(name_err(peer, "cluster_name", "is empty"));
    }
    if cla.endpoints.iter().all(|l| l.lb_endpoints.is_empty()) {
        return Err(BuildError::Address { peer: peer.into(), field: "endpoints".into(), cause: "no endpoint".into() });
    }
    for (i, l) in cla.endpoints.iter().enumerate() {
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let sa = match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address { address: Some(address::Address::SocketAddress(sa)) }),
                    ..
                })) => sa,
                _ => return Err(malformed(peer, format!("{at}.endpoint.address"), "is not a socket address")),
            };
            if sa.address.is_empty() {
                return Err(BuildError::Address { peer: peer.into(), field: format!("{at}.endpoint.address"), cause: "is empty".into() });
            }
            if sa.address.parse::<std::net::IpAddr>().is_err() {
                return Err(BuildError::Address {
                    peer: peer.into(),
                    field: format!("{at}.endpoint.address"),
                    cause: format!("{:?} is not an IP address", sa.address),
                });
            }
            if !matches!(sa.port_specifier, Some(socket_address::PortSpecifier::PortValue(p)) if p != 0 && p <= 65535) {
                return Err(BuildError::Port { peer: peer.into(), field: format!("{at}.endpoint.address.port_value") });
            }
            if e.load_balancing_weight.is_some_and(|w| w.value == 0) {
                return Err(malformed(peer, format!("{at}.load_balancing_weight"), "is 0"));
            }
        }
    }
    Ok(())
}

/// The merged load assignment of one service port: local endpoints
/// (locality `multicloud/local`, priority 0) and each exporter's gateways
/// (locality `multicloud/<peer>`, priority 0 or 1 by `policy`).
pub fn sameness_load_assignment(
    host: &str,
    port: u16,
    local: &[LocalPort],
    exporters: &[(&TrafficPeer, &ExportedService)],
    policy: Sameness,
) -> Result<ClusterLoadAssignment, BuildError> {
    check_local(local)?;
    let mut localities = Vec::new();
    let local_eps = local_endpoints(local, host, port);
    if !local_eps.is_empty() {
        localities.push(LocalityLbEndpoints {
            locality: Some(Locality { region: LOCALITY_REGION.into(), zone: "local".into(), ..Default::default() }),
            lb_endpoints: local_eps,
            priority: 0,
            ..Default::default()
        });
    }
    for (p, svc) in exporters {
        let gateways: Vec<_> = {
            let mut seen = HashSet::new();
            p.view.gateways.iter().filter(|g| seen.insert((g.address.as_str(), g.port))).collect()
        };
        if gateways.is_empty() {
            return Err(BuildError::Address {
                peer: p.view.name.into(),
                field: "ingressGateways".into(),
                cause: "lists no gateway".into(),
            });
        }
        let weights = gateway_weights(svc.ready_endpoints, gateways.len());
        let mut eps = Vec::new();
        for (i, (g, w)) in gateways.iter().zip(weights).enumerate() {
            let ip: std::net::IpAddr = g.address.parse().map_err(|_| BuildError::Address {
                peer: p.view.name.into(),
                field: format!("ingressGateways[{i}].address"),
                cause: format!("{:?} is not an IP address", g.address),
            })?;
            if g.port == 0 {
                return Err(BuildError::Port { peer: p.view.name.into(), field: format!("ingressGateways[{i}].port") });
            }
            eps.push(tagged_endpoint(std::net::SocketAddr::new(ip, g.port), w, Some(p.view.name), Some(p.view.network)));
        }
        localities.push(LocalityLbEndpoints {
            locality: Some(Locality { region: LOCALITY_REGION.into(), zone: p.view.name.into(), ..Default::default() }),
            lb_endpoints: eps,
            priority: match policy {
                Sameness::Balanced => 0,
                Sameness::LocalFirst => 1,
            },
            ..Default::default()
        });
    }
    Ok(ClusterLoadAssignment { cluster_name: sameness_cluster_name(host, port), endpoints: localities, ..Default::default() })
}

/// The load assignment of a gateway's local cluster `name`: the local
/// endpoints of `host:port`, no locality. `local` must have passed `check_local`.
pub(crate) fn gateway_local_load_assignment(name: String, local: &[LocalPort], host: &str, port: u16) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: vec![LocalityLbEndpoints { lb_endpoints: local_endpoints(local, host, port), ..Default::default() }],
        ..Default::default()
    }
}
