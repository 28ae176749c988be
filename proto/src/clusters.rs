//! CDS: the clusters a proxy dials through.
//!
//! - Remote clusters ([`remote_clusters`]): one EDS cluster per service port
//!   a peer exports, to that peer's gateways, with Istio's SNI and mTLS
//!   validated against that peer's root only.
//! - Merged clusters ([`sameness_cluster`]): one per service port some peer
//!   exports, holding the local endpoints and every exporter's gateways;
//!   each endpoint's TLS is chosen by its metadata (`transport_socket_matches`).
//! - The identity-enforcing gateway's local clusters ([`gateway_local_cluster`]).
//!
//! Names come from [`multicloud_core::naming`].

use envoy_types::pb::envoy::config::cluster::v3::{circuit_breakers, cluster, CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, ConfigSource, RoutingPriority, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::{value, Any};
use multicloud_core::metadata::{is_host, ExportedService, MeshMode};
use multicloud_core::naming::{
    peer_root_secret_name, peer_sni, remote_cluster_name, remote_cluster_peer, sameness_cluster_name, sni, LOCAL_ROOT_SECRET,
};
use prost::Message as _;

use crate::error::{local_err, malformed, name_err, BuildError};
use crate::inputs::{check_services, PeerView, TrafficPeer};
use crate::parts::{metadata, sds, secs, struct_of, tls_socket, u32v};
use crate::source::{config_source, config_source_ads, ClientIdentity, ConfigSourceKind, Sources};
use crate::type_url;

/// Filter-metadata namespace on remote and merged clusters.
pub const METADATA_NAMESPACE: &str = "istio-multicloud";
/// ALPN offered to the remote side, as Istio's sidecars do for mTLS.
pub const ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];
/// Endpoint-metadata key choosing a peer's TLS (`envoy.transport_socket_match`).
pub const PEER_MATCH_KEY: &str = "multicloud-peer";

/// Outlier detection for a hop through a remote gateway: a gateway that
/// answers 502/503/504 three times running, or any 5xx five times, is ejected
/// for 15 s (growing with repeats); all of a peer's gateways may be ejected
/// (they are the only way to that peer, and a failing peer must not pin
/// traffic). Envoy's default for gateway-failure enforcement is 0 %, so it is
/// set to 100 % here or `consecutive_gateway_failure` would only be counted.
pub fn outlier_detection() -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: u32v(5),
        consecutive_gateway_failure: u32v(3),
        enforcing_consecutive_gateway_failure: u32v(100),
        interval: secs(5),
        base_ejection_time: secs(15),
        max_ejection_percent: u32v(100),
        ..Default::default()
    }
}

/// Istio's defaults (every limit at u32::MAX, remaining tracked): one
/// cluster carries all of a peer's traffic for a service port, so Envoy's
/// own defaults (1024) would throttle it; limits belong in a DestinationRule.
pub fn circuit_breakers() -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: u32v(u32::MAX),
            max_pending_requests: u32v(u32::MAX),
            max_requests: u32v(u32::MAX),
            max_retries: u32v(u32::MAX),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Upstream TLS: `sni`, `alpn`, the client's certificate and the `trust`
/// secret as validation context, each from its source.
pub(crate) fn upstream_tls(sni: String, alpn: &[&str], client: &ClientIdentity, sources: &Sources, trust: &str) -> UpstreamTlsContext {
    UpstreamTlsContext {
        sni,
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(client.cert_secret, config_source(&sources.cert, client.cert_secret))],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                trust,
                config_source(&sources.trust, trust),
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An EDS cluster of `name` (its load assignment from `eds`): a 2 s connect
/// timeout and [`circuit_breakers`].
fn eds_cluster(name: String, eds: ConfigSource) -> Cluster {
    Cluster {
        name,
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(eds), service_name: String::new() }),
        connect_timeout: secs(2),
        circuit_breakers: Some(circuit_breakers()),
        ..Default::default()
    }
}

/// One EDS cluster per exported service port, as the agent serves them
/// (EDS and trust over ADS, the certificate from `client.sds_cluster`).
pub fn remote_clusters(peer: &PeerView, client: &ClientIdentity) -> Result<Vec<Cluster>, BuildError> {
    remote_clusters_with(peer, client, &Sources::for_client(client))
}

/// [`remote_clusters`] with explicit config sources.
pub fn remote_clusters_with(peer: &PeerView, client: &ClientIdentity, sources: &Sources) -> Result<Vec<Cluster>, BuildError> {
    check_services(peer)?;
    if client.cert_secret.is_empty() {
        return Err(name_err(peer.name, "client.cert_secret", "is empty"));
    }
    if matches!(&sources.cert, ConfigSourceKind::GrpcCluster(c) if c.is_empty()) {
        return Err(name_err(peer.name, "client.sds_cluster", "is empty"));
    }
    let trust = peer_root_secret_name(peer.cluster_uuid);
    let mut out = Vec::new();
    for s in peer.services {
        for p in &s.ports {
            let name = remote_cluster_name(peer.name, &s.hostname, p.port);
            let tls = upstream_tls(sni(&s.hostname, p.port), &ALPN, client, sources, &trust);
            let eds = config_source(&sources.eds, &name);
            let c = Cluster {
                outlier_detection: Some(outlier_detection()),
                transport_socket: Some(tls_socket(tls)),
                metadata: Some(metadata(
                    METADATA_NAMESPACE,
                    &[("peer", peer.name), ("clusterUUID", peer.cluster_uuid), ("network", peer.network)],
                )),
                ..eds_cluster(name, eds)
            };
            validate_cluster(&c)?;
            out.push(c);
        }
    }
    Ok(out)
}

fn cluster_peer(c: &Cluster) -> String {
    let from_meta =
        c.metadata.as_ref().and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE)).and_then(|s| s.fields.get("peer")).and_then(
            |v| match &v.kind {
                Some(value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            },
        );
    from_meta.or_else(|| remote_cluster_peer(&c.name).map(str::to_string)).unwrap_or_else(|| "?".into())
}

fn check_sds(peer: &str, field: &str, s: &SdsSecretConfig) -> Result<(), BuildError> {
    if s.name.is_empty() {
        return Err(name_err(peer, format!("{field}.name"), "is empty"));
    }
    if s.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()).is_none() {
        return Err(malformed(peer, format!("{field}.sds_config"), "is missing"));
    }
    Ok(())
}

/// A remote cluster as Envoy must get it: named, EDS with a config source,
/// a connect timeout, upstream TLS with SNI, a certificate and a validation
/// context from SDS, and the peer in its metadata.
pub fn validate_cluster(c: &Cluster) -> Result<(), BuildError> {
    let peer = cluster_peer(c);
    let peer = peer.as_str();
    if c.name.is_empty() {
        return Err(name_err(peer, "name", "is empty"));
    }
    if c.cluster_discovery_type != Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)) {
        return Err(malformed(peer, "type", "is not EDS"));
    }
    if c.eds_cluster_config.as_ref().and_then(|e| e.eds_config.as_ref()).and_then(|s| s.config_source_specifier.as_ref()).is_none() {
        return Err(malformed(peer, "eds_cluster_config.eds_config", "is missing"));
    }
    if !c.connect_timeout.is_some_and(|d| d.seconds > 0 || d.nanos > 0) {
        return Err(malformed(peer, "connect_timeout", "is not positive"));
    }
    if peer == "?" {
        return Err(malformed(peer, "metadata.filter_metadata.istio-multicloud.peer", "is missing"));
    }
    let Some(TransportSocket { config_type: Some(transport_socket::ConfigType::TypedConfig(any)), .. }) = &c.transport_socket else {
        return Err(malformed(peer, "transport_socket", "is missing"));
    };
    let tls = decode_tls(peer, any)?;
    if tls.sni.is_empty() {
        return Err(name_err(peer, "transport_socket.sni", "is empty"));
    }
    let common = tls.common_tls_context.as_ref().ok_or_else(|| malformed(peer, "common_tls_context", "is missing"))?;
    if common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(malformed(peer, "common_tls_context.tls_certificate_sds_secret_configs", "is empty"));
    }
    for (i, s) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        check_sds(peer, &format!("common_tls_context.tls_certificate_sds_secret_configs[{i}]"), s)?;
    }
    match &common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            check_sds(peer, "common_tls_context.validation_context_sds_secret_config", s)
        }
        _ => Err(malformed(peer, "common_tls_context.validation_context_sds_secret_config", "is missing")),
    }
}

pub(crate) fn decode_tls(peer: &str, any: &Any) -> Result<UpstreamTlsContext, BuildError> {
    if any.type_url != type_url::UPSTREAM_TLS {
        return Err(malformed(peer, "transport_socket.typed_config", format!("is a {}, not an UpstreamTlsContext", any.type_url)));
    }
    UpstreamTlsContext::decode(any.value.as_slice()).map_err(|e| malformed(peer, "transport_socket.typed_config", e.to_string()))
}

/// The merged cluster of one service port (it does not depend on
/// endpoints, weights or gateway addresses). What the caller sends a peer
/// depends on the peer's [`MeshMode`]: Istio's SNI and ALPN for
/// passthrough, [`peer_sni`] of the *caller's* cluster (`local_uuid`) for
/// identity-enforcing.
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
    let local_tls = upstream_tls(sni(host, port), &ALPN, client, &sources, LOCAL_ROOT_SECRET);
    let matches = exporters
        .iter()
        .map(|(p, _)| {
            let (sni, alpn): (String, &[&str]) = match p.mode {
                MeshMode::Passthrough => (sni(host, port), &ALPN),
                MeshMode::IdentityEnforcing => (peer_sni(local_uuid), &[]),
            };
            cluster::TransportSocketMatch {
                name: format!("peer-{}", p.view.name),
                r#match: Some(struct_of(&[(PEER_MATCH_KEY, p.view.name)])),
                transport_socket: Some(tls_socket(upstream_tls(sni, alpn, client, &sources, &peer_root_secret_name(p.view.cluster_uuid)))),
            }
        })
        .collect();
    Ok(Cluster {
        outlier_detection: Some(outlier_detection()),
        transport_socket: Some(tls_socket(local_tls)),
        transport_socket_matches: matches,
        metadata: Some(metadata(METADATA_NAMESPACE, &[("service", host)])),
        ..eds_cluster(sameness_cluster_name(host, port), config_source_ads())
    })
}

/// A gateway's cluster of local endpoints (EDS over ADS), with `tls` to
/// them (identity-enforcing) or none (passthrough: the bytes stay the
/// caller's mTLS).
pub fn gateway_local_cluster(name: String, tls: Option<TransportSocket>) -> Cluster {
    Cluster { transport_socket: tls, ..eds_cluster(name, config_source_ads()) }
}
