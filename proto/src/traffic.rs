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
//! **Gateway (mesh port).** One listener [`MESH_LISTENER`]:
//! - passthrough: TLS inspector, one filter chain per exported service port
//!   (exact SNI) to a plain TCP proxy towards the local endpoints; the
//!   sidecars do mTLS end to end. Only exported services have a chain;
//!   anything else is closed.
//! - identity-enforcing: one filter chain per peer (exact SNI
//!   [`peer_sni`]`(peer uuid)`), requiring a client certificate that
//!   validates against that peer's root only; then HTTP with the
//!   `multicloud-mesh` filter (ECDS, [`MESH_FILTER_NAME`]) which maps the
//!   chain's SNI to the peer, refuses services not exported to it and sets
//!   the trusted `x-multicloud-caller-*` headers after stripping any copy
//!   from outside; then routes by `:authority` to the local endpoints over
//!   mTLS with the gateway's own workload certificate, validated against the
//!   local root.

use std::collections::{BTreeMap, HashMap, HashSet};

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, transport_socket, Address, ConfigSource, ExtensionConfigSource, Locality, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::{BoolValue, Struct};
use envoy_types::util::pack_any;
use multicloud_core::metadata::{is_host, ExportedService, MeshMode};

use crate::mesh::{self, BuildError, ClientIdentity, PeerView, Sources, ALPN, LOCAL};

/// SDS name of the local root alone: what local endpoints are validated against.
pub const LOCAL_ROOT_SECRET: &str = "multicloud-local-root";
/// The gateway's mesh-port listener.
pub const MESH_LISTENER: &str = "multicloud-mesh";
/// ECDS name (and plugin root id) of the filter in the identity-enforcing chains.
pub const MESH_FILTER_NAME: &str = "multicloud-mesh";
/// Endpoint-metadata key choosing a peer's TLS (`envoy.transport_socket_match`).
pub const PEER_MATCH_KEY: &str = "multicloud-peer";
/// The namespace Envoy matches `transport_socket_matches` against.
const SOCKET_MATCH_NAMESPACE: &str = "envoy.transport_socket_match";
const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// How a service's local and remote copies share its calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Sameness {
    #[default]
    Balanced,
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

/// `outbound|<port>||<host>|multicloud`: the merged cluster sidecars call.
pub fn sameness_cluster_name(hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}|multicloud")
}

/// `outbound|<port>||<host>|local`: the identity-enforcing gateway's route
/// to the local endpoints (a peer named `local` would be `|multicloud-local`).
pub fn gateway_local_cluster_name(hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}|local")
}

/// The SNI a caller in cluster `caller_uuid` sends an identity-enforcing gateway.
pub fn peer_sni(caller_uuid: &str) -> String {
    format!("{}.peer.multicloud", caller_uuid.to_ascii_lowercase())
}

/// One local service port and its ready endpoints (`ip:port`).
#[derive(Debug, Clone, Copy)]
pub struct LocalPort<'a> {
    pub hostname: &'a str,
    pub port: u16,
    pub addresses: &'a [String],
}

/// A peer as the traffic builders see it.
#[derive(Debug, Clone, Copy)]
pub struct TrafficPeer<'a> {
    pub view: PeerView<'a>,
    pub mode: MeshMode,
}

fn local_err(field: impl Into<String>, cause: impl Into<String>) -> BuildError {
    BuildError::Address { peer: LOCAL.into(), field: field.into(), cause: cause.into() }
}

fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// `ip:port` with an IP literal and a non-zero port.
fn parse_endpoint(field: &str, s: &str) -> Result<std::net::SocketAddr, BuildError> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(sa),
        Ok(_) => Err(BuildError::Port { peer: LOCAL.into(), field: field.into() }),
        Err(_) => Err(local_err(field, format!("{s:?} is not ip:port"))),
    }
}

fn check_local(ports: &[LocalPort]) -> Result<(), BuildError> {
    for (i, p) in ports.iter().enumerate() {
        if !is_host(p.hostname) || p.hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(local_err(format!("localEndpoints[{i}].hostname"), format!("{:?} is not a DNS name", p.hostname)));
        }
        if p.port == 0 {
            return Err(BuildError::Port { peer: LOCAL.into(), field: format!("localEndpoints[{i}].port") });
        }
        for (j, a) in p.addresses.iter().enumerate() {
            parse_endpoint(&format!("localEndpoints[{i}].addresses[{j}]"), a)?;
        }
    }
    Ok(())
}

fn lb_endpoint(sa: std::net::SocketAddr, weight: u32, match_peer: Option<&str>, network: Option<&str>) -> LbEndpoint {
    let mut filter_metadata = HashMap::new();
    if let Some(peer) = match_peer {
        filter_metadata.insert(SOCKET_MATCH_NAMESPACE.to_string(), struct_of(&[(PEER_MATCH_KEY, peer)]));
    }
    if let Some(n) = network {
        filter_metadata.insert("istio".to_string(), struct_of(&[("network", n)]));
    }
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(&sa.ip().to_string(), sa.port())),
            ..Default::default()
        })),
        load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value: weight.max(1) }),
        metadata: (!filter_metadata.is_empty())
            .then(|| envoy_types::pb::envoy::config::core::v3::Metadata { filter_metadata, ..Default::default() }),
        ..Default::default()
    }
}

fn struct_of(fields: &[(&str, &str)]) -> Struct {
    use envoy_types::pb::google::protobuf::{value, Value};
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value { kind: Some(value::Kind::StringValue((*v).into())) }))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

fn sds(name: &str, source: &ConfigSource) -> SdsSecretConfig {
    SdsSecretConfig { name: name.into(), sds_config: Some(source.clone()) }
}

fn ads() -> ConfigSource {
    mesh::config_source_ads()
}

fn tls_socket<T: prost::Name>(ctx: T) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

fn upstream_tls(sni: String, alpn: &[&str], client: &ClientIdentity, sources: &Sources, trust: &str) -> UpstreamTlsContext {
    UpstreamTlsContext {
        sni,
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(client.cert_secret, &mesh::config_source_for(&sources.cert, client.cert_secret))],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                trust,
                &mesh::config_source_for(&sources.trust, trust),
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The secret holding only the local root.
pub fn local_root_secret(local_root_pem: &str) -> Result<Secret, BuildError> {
    let bundle = multicloud_core::pem::CertBundle::from_pem(local_root_pem).map_err(|e| BuildError::Root {
        peer: LOCAL.into(),
        field: "rootCA".into(),
        cause: e.to_string(),
    })?;
    let s = mesh::validation_secret_named(LOCAL_ROOT_SECRET, bundle.to_pem());
    mesh::validate_secret(&s)?;
    Ok(s)
}

/// Every (host, port) some peer exports, with the peers exporting it (in
/// the given order) and that peer's service entry.
fn exported_ports<'a>(peers: &'a [TrafficPeer<'a>]) -> BTreeMap<(&'a str, u16), Vec<(&'a TrafficPeer<'a>, &'a ExportedService)>> {
    let mut out: BTreeMap<(&str, u16), Vec<_>> = BTreeMap::new();
    for p in peers {
        for s in p.view.services {
            for port in &s.ports {
                out.entry((s.hostname.as_str(), port.port)).or_default().push((p, s));
            }
        }
    }
    out
}

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
    for ((host, port), exporters) in exported_ports(peers) {
        clusters.push(sameness_cluster(local_uuid, host, port, &exporters, client)?);
        cla.push(sameness_load_assignment(host, port, local, &exporters, policy)?);
    }
    Ok((clusters, cla))
}

/// Groups peers' exports by service port: (host, port) → exporters.
pub fn exports_by_port<'a>(peers: &'a [TrafficPeer<'a>]) -> BTreeMap<(&'a str, u16), Vec<(&'a TrafficPeer<'a>, &'a ExportedService)>> {
    exported_ports(peers)
}

/// The merged cluster of one service port (it does not depend on
/// endpoints, weights or gateway addresses).
pub fn sameness_cluster(
    local_uuid: &str,
    host: &str,
    port: u16,
    exporters: &[(&TrafficPeer, &ExportedService)],
    client: &ClientIdentity,
) -> Result<Cluster, BuildError> {
    if !is_host(host) || port == 0 {
        return Err(local_err("services", format!("{host}:{port} is not a service port")));
    }
    let sources = Sources::for_client(client);
    let local_tls = upstream_tls(mesh::sni(host, port), &ALPN, client, &sources, LOCAL_ROOT_SECRET);
    let matches = exporters
        .iter()
        .map(|(p, _)| {
            let (sni, alpn): (String, &[&str]) = match p.mode {
                MeshMode::Passthrough => (mesh::sni(host, port), &ALPN),
                MeshMode::IdentityEnforcing => (peer_sni(local_uuid), &[]),
            };
            cluster::TransportSocketMatch {
                name: format!("peer-{}", p.view.name),
                r#match: Some(struct_of(&[(PEER_MATCH_KEY, p.view.name)])),
                transport_socket: Some(tls_socket(upstream_tls(
                    sni,
                    alpn,
                    client,
                    &sources,
                    &mesh::peer_root_secret_name(p.view.cluster_uuid),
                ))),
            }
        })
        .collect();
    Ok(Cluster {
        name: sameness_cluster_name(host, port),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 2, nanos: 0 }),
        circuit_breakers: Some(mesh::circuit_breakers_default()),
        outlier_detection: Some(mesh::outlier_detection_default()),
        transport_socket: Some(tls_socket(local_tls)),
        transport_socket_matches: matches,
        metadata: Some(envoy_types::pb::envoy::config::core::v3::Metadata {
            filter_metadata: HashMap::from([(mesh::METADATA_NAMESPACE.to_string(), struct_of(&[("service", host)]))]),
            ..Default::default()
        }),
        ..Default::default()
    })
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
    let local_eps: Vec<LbEndpoint> = local
        .iter()
        .filter(|l| l.hostname == host && l.port == port)
        .flat_map(|l| l.addresses.iter())
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|sa| lb_endpoint(sa, 1, None, None))
        .collect();
    if !local_eps.is_empty() {
        localities.push(LocalityLbEndpoints {
            locality: Some(Locality { region: mesh::LOCALITY_REGION.into(), zone: "local".into(), ..Default::default() }),
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
        let weights = mesh::gateway_weights(svc.ready_endpoints, gateways.len());
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
            eps.push(lb_endpoint(std::net::SocketAddr::new(ip, g.port), w, Some(p.view.name), Some(p.view.network)));
        }
        localities.push(LocalityLbEndpoints {
            locality: Some(Locality { region: mesh::LOCALITY_REGION.into(), zone: p.view.name.into(), ..Default::default() }),
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
    let mut ports: Vec<(&str, u16)> = Vec::new();
    for (i, s) in inputs.exported.iter().enumerate() {
        if !is_host(&s.hostname) || s.hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(local_err(format!("services[{i}].hostname"), format!("{:?} is not a DNS name", s.hostname)));
        }
        for p in &s.ports {
            if p.port == 0 {
                return Err(BuildError::Port { peer: LOCAL.into(), field: format!("services[{i}].ports") });
            }
            if !ports.contains(&(s.hostname.as_str(), p.port)) {
                ports.push((s.hostname.as_str(), p.port));
            }
        }
    }
    let load = |name: String, host: &str, port: u16| ClusterLoadAssignment {
        cluster_name: name,
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: inputs
                .local
                .iter()
                .filter(|l| l.hostname == host && l.port == port)
                .flat_map(|l| l.addresses.iter())
                .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|sa| lb_endpoint(sa, 1, None, None))
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let eds_cluster = |name: String, tls: Option<TransportSocket>| Cluster {
        name,
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 2, nanos: 0 }),
        circuit_breakers: Some(mesh::circuit_breakers_default()),
        transport_socket: tls,
        ..Default::default()
    };
    let tls_inspector = ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
        ..Default::default()
    };
    let (mut clusters, mut cla, mut chains) = (Vec::new(), Vec::new(), Vec::new());
    match inputs.mode {
        MeshMode::Passthrough => {
            for (host, port) in &ports {
                let name = mesh::sni(host, *port);
                clusters.push(eds_cluster(name.clone(), None));
                cla.push(load(name.clone(), host, *port));
                chains.push(FilterChain {
                    name: name.clone(),
                    filter_chain_match: Some(FilterChainMatch { server_names: vec![name.clone()], ..Default::default() }),
                    filters: vec![Filter {
                        name: "envoy.filters.network.tcp_proxy".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
                            stat_prefix: name.clone(),
                            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(name)),
                            ..Default::default()
                        }))),
                    }],
                    ..Default::default()
                });
            }
        }
        MeshMode::IdentityEnforcing => {
            let sources = Sources::for_client(&inputs.client);
            let mut vhosts = Vec::new();
            for (host, port) in &ports {
                let name = gateway_local_cluster_name(host, *port);
                let tls = upstream_tls(mesh::sni(host, *port), &ALPN, &inputs.client, &sources, LOCAL_ROOT_SECRET);
                clusters.push(eds_cluster(name.clone(), Some(tls_socket(tls))));
                cla.push(load(name.clone(), host, *port));
                // `host:port` always; the bare host means the service's first port.
                let mut domains = vec![format!("{host}:{port}")];
                if ports.iter().find(|(h, _)| h == host).map(|(_, p)| p) == Some(port) {
                    domains.push((*host).to_string());
                }
                vhosts.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains,
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
            let mut uuids = HashSet::new();
            for p in inputs.peers {
                if !uuids.insert(p.cluster_uuid.to_ascii_lowercase()) {
                    return Err(BuildError::Malformed {
                        peer: p.name.into(),
                        field: "clusterUUID".into(),
                        cause: "another peer has this cluster UUID".into(),
                    });
                }
                let trust = mesh::peer_root_secret_name(p.cluster_uuid);
                let downstream = DownstreamTlsContext {
                    require_client_certificate: Some(BoolValue { value: true }),
                    common_tls_context: Some(CommonTlsContext {
                        tls_certificate_sds_secret_configs: vec![sds(
                            inputs.client.cert_secret,
                            &mesh::config_source_for(&sources.cert, inputs.client.cert_secret),
                        )],
                        validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                            &trust,
                            &ads(),
                        ))),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let hcm = HttpConnectionManager {
                    stat_prefix: format!("multicloud_mesh_{}", p.name),
                    forward_client_cert_details: http_connection_manager::ForwardClientCertDetails::Sanitize as i32,
                    route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
                        name: format!("{MESH_LISTENER}~{}", p.name),
                        virtual_hosts: vhosts.clone(),
                        ..Default::default()
                    })),
                    http_filters: vec![
                        HttpFilter {
                            name: MESH_FILTER_NAME.into(),
                            config_type: Some(http_filter::ConfigType::ConfigDiscovery(ExtensionConfigSource {
                                config_source: Some(ads()),
                                type_urls: vec![WASM_TYPE_URL.into()],
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                        HttpFilter {
                            name: "envoy.filters.http.router".into(),
                            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                                envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
                            ))),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                };
                chains.push(FilterChain {
                    name: format!("peer~{}", p.name),
                    filter_chain_match: Some(FilterChainMatch { server_names: vec![peer_sni(p.cluster_uuid)], ..Default::default() }),
                    transport_socket: Some(tls_socket(downstream)),
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                    }],
                    ..Default::default()
                });
            }
        }
    }
    let listener = Listener {
        name: MESH_LISTENER.into(),
        address: Some(socket(&inputs.listen.ip().to_string(), inputs.listen.port())),
        listener_filters: vec![tls_inspector],
        filter_chains: chains,
        ..Default::default()
    };
    Ok((listener, clusters, cla))
}

#[cfg(test)]
mod tests {
    use super::*;
    use multicloud_core::metadata::{IngressGateway, ServicePort};
    use prost::Message as _;

    const UUID_A: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
    const UUID_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";

    fn svc(host: &str, ready: u32) -> ExportedService {
        ExportedService {
            hostname: host.into(),
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: None }],
            ready_endpoints: ready,
        }
    }

    fn client() -> ClientIdentity<'static> {
        ClientIdentity { cert_secret: "default", sds_cluster: "ads" }
    }

    fn tls_of(ts: &TransportSocket) -> UpstreamTlsContext {
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else { panic!("typed config") };
        UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
    }

    fn validation_name(t: &UpstreamTlsContext) -> String {
        match &t.common_tls_context.as_ref().unwrap().validation_context_type {
            Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => s.name.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn merged_cluster_validates_each_copy_against_its_own_root_only() {
        let gws = [IngressGateway { address: "127.0.2.1".into(), port: 15443 }];
        let services = [svc("foo.abc.svc.cluster.local", 3)];
        let view = PeerView { name: "b", cluster_uuid: UUID_B, root_ca_pem: "", network: "nb", gateways: &gws, services: &services };
        for (mode, sni) in [
            (MeshMode::Passthrough, "outbound_.80_._.foo.abc.svc.cluster.local".to_string()),
            (MeshMode::IdentityEnforcing, format!("{UUID_A}.peer.multicloud")),
        ] {
            let peers = [TrafficPeer { view, mode }];
            let addrs = ["127.0.1.3:15006".to_string()];
            let local = [LocalPort { hostname: "foo.abc.svc.cluster.local", port: 80, addresses: &addrs }];
            let (clusters, cla) = sameness_resources(UUID_A, &local, &peers, &client(), Sameness::Balanced).unwrap();
            assert_eq!(clusters.len(), 1);
            let c = &clusters[0];
            assert_eq!(c.name, "outbound|80||foo.abc.svc.cluster.local|multicloud");
            // Local endpoints (no match metadata) use the default socket: local root only.
            assert_eq!(validation_name(&tls_of(c.transport_socket.as_ref().unwrap())), LOCAL_ROOT_SECRET);
            // The peer's gateways: that peer's root only, and the SNI its mode wants.
            let m = &c.transport_socket_matches[0];
            let t = tls_of(m.transport_socket.as_ref().unwrap());
            assert_eq!(validation_name(&t), mesh::peer_root_secret_name(UUID_B));
            assert_eq!(t.sni, sni, "{mode:?}");
            assert!(m.r#match.as_ref().unwrap().fields.contains_key(PEER_MATCH_KEY));
            // Balanced: both at priority 0; the peer weighs its ready endpoints.
            let e = &cla[0];
            assert_eq!(e.endpoints.len(), 2);
            assert!(e.endpoints.iter().all(|l| l.priority == 0));
            assert_eq!(e.endpoints[1].lb_endpoints[0].load_balancing_weight.as_ref().unwrap().value, 3);
            let meta = e.endpoints[1].lb_endpoints[0].metadata.as_ref().unwrap();
            assert!(meta.filter_metadata.contains_key("envoy.transport_socket_match"));
        }
    }

    #[test]
    fn local_first_puts_peers_at_priority_one_and_bad_local_endpoints_are_named() {
        let gws = [IngressGateway { address: "127.0.2.1".into(), port: 15443 }];
        let services = [svc("foo.abc.svc.cluster.local", 1)];
        let view = PeerView { name: "b", cluster_uuid: UUID_B, root_ca_pem: "", network: "nb", gateways: &gws, services: &services };
        let peers = [TrafficPeer { view, mode: MeshMode::Passthrough }];
        let (_, cla) = sameness_resources(UUID_A, &[], &peers, &client(), Sameness::LocalFirst).unwrap();
        assert_eq!(cla[0].endpoints.len(), 1, "no local copy: the peer only");
        assert_eq!(cla[0].endpoints[0].priority, 1);
        let bad = ["foo.example:80".to_string()];
        let local = [LocalPort { hostname: "foo.abc.svc.cluster.local", port: 80, addresses: &bad }];
        let err = sameness_resources(UUID_A, &local, &peers, &client(), Sameness::LocalFirst).unwrap_err();
        assert_eq!(err.field(), "localEndpoints[0].addresses[0]", "{err}");
        let gws = [IngressGateway { address: "gw.example".into(), port: 15443 }];
        let view = PeerView { gateways: &gws, ..view };
        let err = sameness_resources(UUID_A, &[], &[TrafficPeer { view, mode: MeshMode::Passthrough }], &client(), Sameness::Balanced)
            .unwrap_err();
        assert_eq!((err.peer(), err.field()), ("b", "ingressGateways[0].address"), "{err}");
    }

    #[test]
    fn mesh_port_listener_per_mode() {
        let exported = [svc("foo.abc.svc.cluster.local", 1)];
        let addrs = ["127.0.2.3:15006".to_string()];
        let local = [LocalPort { hostname: "foo.abc.svc.cluster.local", port: 80, addresses: &addrs }];
        let gws: [IngressGateway; 0] = [];
        let peer = PeerView { name: "a", cluster_uuid: UUID_A, root_ca_pem: "", network: "na", gateways: &gws, services: &[] };
        let mut inputs = GatewayInputs {
            mode: MeshMode::Passthrough,
            listen: "127.0.2.1:15443".parse().unwrap(),
            exported: &exported,
            local: &local,
            peers: std::slice::from_ref(&peer),
            client: client(),
        };
        let (l, clusters, cla) = gateway_resources(&inputs).unwrap();
        assert_eq!(l.filter_chains.len(), 1);
        let m = l.filter_chains[0].filter_chain_match.as_ref().unwrap();
        assert_eq!(m.server_names, vec!["outbound_.80_._.foo.abc.svc.cluster.local"]);
        assert!(l.filter_chains[0].transport_socket.is_none(), "passthrough does not terminate TLS");
        assert!(clusters[0].transport_socket.is_none());
        assert_eq!(cla[0].endpoints[0].lb_endpoints.len(), 1);

        inputs.mode = MeshMode::IdentityEnforcing;
        let (l, clusters, _) = gateway_resources(&inputs).unwrap();
        assert_eq!(l.filter_chains.len(), 1, "one chain per peer");
        let chain = &l.filter_chains[0];
        assert_eq!(chain.filter_chain_match.as_ref().unwrap().server_names, vec![peer_sni(UUID_A)]);
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &chain.transport_socket.as_ref().unwrap().config_type else { panic!() };
        let d = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(d.require_client_certificate, Some(BoolValue { value: true }));
        match &d.common_tls_context.unwrap().validation_context_type {
            Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
                assert_eq!(s.name, mesh::peer_root_secret_name(UUID_A), "the peer's root only")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(clusters[0].name, "outbound|80||foo.abc.svc.cluster.local|local");
        assert_eq!(validation_name(&tls_of(clusters[0].transport_socket.as_ref().unwrap())), LOCAL_ROOT_SECRET);

        // Two peers claiming one UUID: refused, naming the peer.
        let twin = PeerView { name: "a2", ..peer };
        let both = [peer, twin];
        inputs.peers = &both;
        let err = gateway_resources(&inputs).unwrap_err();
        assert_eq!((err.peer(), err.field()), ("a2", "clusterUUID"));
    }
}
