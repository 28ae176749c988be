//! The resources the agent pushes to local proxies for the mesh itself:
//! SDS trust secrets, and CDS/EDS for the services peers export.
//!
//! Pure builders, no I/O. Every resource is validated before it is
//! returned (and so before it is pushed), so Envoy never sees a malformed
//! root or an empty address: a root must parse as X.509 certificates
//! ([`CertBundle::from_pem`]), an endpoint address must be an IP literal
//! (EDS does not resolve names), ports must be non-zero, names non-empty.
//! Errors name the peer, the field (as the peer's metadata document names
//! it, or as the Envoy resource does for the `validate_*` functions) and
//! the cause.
//!
//! Names:
//! - remote clusters are `outbound|<port>||<hostname>|multicloud-<peer>`:
//!   istiod already programs `outbound|<port>||<hostname>` for the local
//!   copy of the same service (same cluster domain, so same hostname), and
//!   two CDS resources of one name replace each other. The fifth field keeps
//!   the remote copy apart from istiod's and each peer's apart from the
//!   others'; Istio's own cluster-name parsers read the first four fields
//!   and ignore the rest, so stats and telemetry still see the service.
//! - SNI is Istio's `outbound_.<port>_._.<hostname>`, what the remote
//!   gateway's `AUTO_PASSTHROUGH` listener routes on.
//!
//! Trust: a remote cluster validates the server against **that peer's root
//! only** ([`peer_root_secret_name`]), not the merged [`TRUST_BUNDLE_SECRET`]:
//! both clusters share the SPIFFE trust domain, so with the merged bundle any
//! peer's CA (or the local one) could mint the certificate that answers for
//! another peer's service. The merged bundle is for the workloads' inbound
//! side, which must accept callers from every peer.

use std::collections::{BTreeMap, HashMap, HashSet};

use envoy_types::pb::envoy::config::cluster::v3::{circuit_breakers, cluster, CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source, config_source, data_source, grpc_service, socket_address, transport_socket, Address,
    AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, Locality, Metadata, PathConfigSource,
    RoutingPriority, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, secret, CertificateValidationContext, CommonTlsContext, SdsSecretConfig, Secret, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::{value, Any, Duration, Struct, UInt32Value, Value};
use envoy_types::util::pack_any;
use multicloud_core::metadata::{is_host, is_uuid};
use multicloud_core::pem::CertBundle;
use prost::Message as _;

pub use multicloud_core::metadata::{ExportedService, IngressGateway};

pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const UPSTREAM_TLS_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// SDS name of the local root plus every peer's root.
pub const TRUST_BUNDLE_SECRET: &str = "multicloud-trust-bundle";
/// Filter-metadata namespace on remote clusters.
pub const METADATA_NAMESPACE: &str = "istio-multicloud";
/// Locality region of every remote endpoint (the zone is the peer's name).
pub const LOCALITY_REGION: &str = "multicloud";
/// ALPN offered to the remote side, as Istio's sidecars do for mTLS.
pub const ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];
/// The peer name used in errors about the local cluster's own root.
pub const LOCAL: &str = "(local)";

/// One established peer as the data plane needs it.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    /// The `IstioMulticloud` object's name.
    pub name: &'a str,
    pub cluster_uuid: &'a str,
    pub root_ca_pem: &'a str,
    pub network: &'a str,
    pub gateways: &'a [IngressGateway],
    pub services: &'a [ExportedService],
}

/// Who the local proxy is when it dials a peer.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// SDS name of the workload certificate (Istio's `"default"`).
    pub cert_secret: &'a str,
    /// Cluster serving SDS for that certificate (`"sds-grpc"` for
    /// istio-agent), or `"ads"` for the ADS stream.
    pub sds_cluster: &'a str,
}

/// Where a resource a cluster refers to comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSourceKind {
    /// The ADS stream (what the agent serves).
    Ads,
    /// A gRPC xDS/SDS server behind the named static cluster.
    GrpcCluster(String),
    /// Files, one per resource: `<dir>/<resource_file_name(name)>`, each a
    /// binary `DiscoveryResponse` (Envoy without any xDS server: tests).
    FilesIn(String),
}

/// The config sources of the resources a remote cluster refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Its `ClusterLoadAssignment`.
    pub eds: ConfigSourceKind,
    /// The peer's root (validation context).
    pub trust: ConfigSourceKind,
    /// The workload certificate.
    pub cert: ConfigSourceKind,
}

impl Sources {
    /// What the agent pushes: EDS and trust over ADS, the certificate from
    /// `client.sds_cluster` (`"ads"` meaning ADS).
    pub fn for_client(client: &ClientIdentity) -> Sources {
        let cert =
            if client.sds_cluster == "ads" { ConfigSourceKind::Ads } else { ConfigSourceKind::GrpcCluster(client.sds_cluster.into()) };
        Sources { eds: ConfigSourceKind::Ads, trust: ConfigSourceKind::Ads, cert }
    }
}

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
    pub fn peer(&self) -> &str {
        match self {
            BuildError::Root { peer, .. }
            | BuildError::Address { peer, .. }
            | BuildError::Port { peer, .. }
            | BuildError::Name { peer, .. }
            | BuildError::Malformed { peer, .. } => peer,
        }
    }

    pub fn field(&self) -> &str {
        match self {
            BuildError::Root { field, .. }
            | BuildError::Address { field, .. }
            | BuildError::Port { field, .. }
            | BuildError::Name { field, .. }
            | BuildError::Malformed { field, .. } => field,
        }
    }
}

fn name_err(peer: &str, field: impl Into<String>, cause: impl Into<String>) -> BuildError {
    BuildError::Name { peer: peer.into(), field: field.into(), cause: cause.into() }
}

fn malformed(peer: &str, field: impl Into<String>, cause: impl Into<String>) -> BuildError {
    BuildError::Malformed { peer: peer.into(), field: field.into(), cause: cause.into() }
}

// ---------------------------------------------------------------- names --

/// `multicloud-peer-root~<uuid>`: the SDS secret holding only that peer's root.
pub fn peer_root_secret_name(cluster_uuid: &str) -> String {
    format!("multicloud-peer-root~{cluster_uuid}")
}

/// `outbound|<port>||<hostname>|multicloud-<peer>`; see the module docs for
/// why it is not Istio's `outbound|<port>||<hostname>`.
pub fn remote_cluster_name(peer: &str, hostname: &str, port: u16) -> String {
    format!("outbound|{port}||{hostname}|multicloud-{peer}")
}

/// Istio's SNI for a service port: `outbound_.<port>_._.<hostname>`.
pub fn sni(hostname: &str, port: u16) -> String {
    format!("outbound_.{port}_._.{hostname}")
}

/// The file a [`ConfigSourceKind::FilesIn`] source reads for `resource_name`.
pub fn resource_file_name(resource_name: &str) -> String {
    format!("{}.pb", resource_name.replace('/', "_"))
}

// -------------------------------------------------------------- secrets --

fn parse_root(peer: &str, field: &str, pem: &str) -> Result<CertBundle, BuildError> {
    CertBundle::from_pem(pem).map_err(|e| BuildError::Root { peer: peer.into(), field: field.into(), cause: e.to_string() })
}

fn validation_secret(name: String, pem: String) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource { specifier: Some(data_source::Specifier::InlineString(pem)), ..Default::default() }),
            ..Default::default()
        })),
    }
}

/// [`TRUST_BUNDLE_SECRET`]: the local root, then each peer's root (peers in
/// name order, duplicate certificates once), re-encoded from the parsed DER
/// so that only `CERTIFICATE` blocks reach Envoy.
pub fn trust_bundle_secret(local_root_pem: &str, peers: &[PeerView]) -> Result<Secret, BuildError> {
    let mut certs: Vec<Vec<u8>> = parse_root(LOCAL, "rootCA", local_root_pem)?.certs_der;
    let mut sorted: Vec<&PeerView> = peers.iter().collect();
    sorted.sort_by_key(|p| p.name);
    for p in sorted {
        check_peer_names(p)?;
        certs.extend(parse_root(p.name, "rootCA", p.root_ca_pem)?.certs_der);
    }
    let mut seen = HashSet::new();
    certs.retain(|c| seen.insert(c.clone()));
    let s = validation_secret(TRUST_BUNDLE_SECRET.into(), CertBundle { certs_der: certs }.to_pem());
    validate_secret(&s)?;
    Ok(s)
}

/// [`peer_root_secret_name`]: only `peer`'s root.
pub fn peer_root_secret(peer: &PeerView) -> Result<Secret, BuildError> {
    check_peer_names(peer)?;
    let root = parse_root(peer.name, "rootCA", peer.root_ca_pem)?;
    let s = validation_secret(peer_root_secret_name(peer.cluster_uuid), root.to_pem());
    validate_secret(&s)?;
    Ok(s)
}

/// A validation-context secret: named, and its `trusted_ca` an inline PEM
/// bundle of certificates. The peer in errors is read from the name.
pub fn validate_secret(s: &Secret) -> Result<(), BuildError> {
    let peer = s.name.strip_prefix("multicloud-peer-root~").unwrap_or(&s.name);
    if s.name.is_empty() {
        return Err(name_err("?", "name", "is empty"));
    }
    let Some(secret::Type::ValidationContext(vc)) = &s.r#type else {
        return Err(malformed(peer, "validation_context", "is missing"));
    };
    match vc.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineString(pem)) => parse_root(peer, "validation_context.trusted_ca", pem).map(|_| ()),
        _ => Err(malformed(peer, "validation_context.trusted_ca", "is not an inline string")),
    }
}

// ---------------------------------------------------------- inputs check --

fn check_peer_names(p: &PeerView) -> Result<(), BuildError> {
    if !is_host(p.name) || p.name.parse::<std::net::IpAddr>().is_ok() {
        return Err(name_err(if p.name.is_empty() { "?" } else { p.name }, "name", "must be a DNS-1123 object name"));
    }
    if !is_uuid(p.cluster_uuid) {
        return Err(name_err(p.name, "clusterUUID", "is not a UUID"));
    }
    Ok(())
}

fn check_services(p: &PeerView) -> Result<(), BuildError> {
    check_peer_names(p)?;
    if p.network.is_empty() {
        return Err(name_err(p.name, "networkName", "is empty"));
    }
    let mut names = HashSet::new();
    for (i, s) in p.services.iter().enumerate() {
        if !is_host(&s.hostname) || s.hostname.parse::<std::net::IpAddr>().is_ok() {
            return Err(name_err(p.name, format!("services[{i}].hostname"), format!("{:?} is not a DNS name", s.hostname)));
        }
        for (j, port) in s.ports.iter().enumerate() {
            if port.port == 0 {
                return Err(BuildError::Port { peer: p.name.into(), field: format!("services[{i}].ports[{j}].port") });
            }
            if !names.insert((s.hostname.as_str(), port.port)) {
                return Err(malformed(
                    p.name,
                    format!("services[{i}].ports[{j}]"),
                    format!("{}:{} is exported twice", s.hostname, port.port),
                ));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------- clusters --

fn config_source(kind: &ConfigSourceKind, resource_name: &str) -> ConfigSource {
    let spec = match kind {
        ConfigSourceKind::Ads => config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {}),
        ConfigSourceKind::GrpcCluster(cluster) => config_source::ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: api_config_source::ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                    cluster_name: cluster.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            set_node_on_first_message_only: true,
            ..Default::default()
        }),
        ConfigSourceKind::FilesIn(dir) => config_source::ConfigSourceSpecifier::PathConfigSource(PathConfigSource {
            path: format!("{dir}/{}", resource_file_name(resource_name)),
            ..Default::default()
        }),
    };
    ConfigSource { resource_api_version: ApiVersion::V3 as i32, config_source_specifier: Some(spec), ..Default::default() }
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(value::Kind::StringValue(s.into())) }
}

fn struct_of(fields: &[(&str, &str)]) -> Struct {
    Struct { fields: fields.iter().map(|(k, v)| ((*k).to_string(), string_value(v))).collect::<BTreeMap<_, _>>().into_iter().collect() }
}

fn metadata(namespace: &str, fields: &[(&str, &str)]) -> Metadata {
    Metadata { filter_metadata: HashMap::from([(namespace.to_string(), struct_of(fields))]), ..Default::default() }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

/// Outlier detection for a hop through a remote gateway: a gateway that
/// answers 502/503/504 three times running, or any 5xx five times, is ejected
/// for 15 s (growing with repeats); all of a peer's gateways may be ejected
/// (they are the only way to that peer, and a failing peer must not pin
/// traffic). Envoy's default for gateway-failure enforcement is 0 %, so it is
/// set to 100 % here or `consecutive_gateway_failure` would only be counted.
fn outlier_detection() -> OutlierDetection {
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
fn circuit_breakers() -> CircuitBreakers {
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

fn upstream_tls(peer: &PeerView, client: &ClientIdentity, sources: &Sources, hostname: &str, port: u16) -> UpstreamTlsContext {
    let trust = peer_root_secret_name(peer.cluster_uuid);
    UpstreamTlsContext {
        sni: sni(hostname, port),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: ALPN.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: client.cert_secret.into(),
                sds_config: Some(config_source(&sources.cert, client.cert_secret)),
            }],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(SdsSecretConfig {
                sds_config: Some(config_source(&sources.trust, &trust)),
                name: trust,
            })),
            ..Default::default()
        }),
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
    let mut out = Vec::new();
    for s in peer.services {
        for p in &s.ports {
            let name = remote_cluster_name(peer.name, &s.hostname, p.port);
            let tls = upstream_tls(peer, client, sources, &s.hostname, p.port);
            let c = Cluster {
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(cluster::EdsClusterConfig {
                    eds_config: Some(config_source(&sources.eds, &name)),
                    service_name: String::new(),
                }),
                connect_timeout: secs(2),
                circuit_breakers: Some(circuit_breakers()),
                outlier_detection: Some(outlier_detection()),
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(tls))),
                }),
                metadata: Some(metadata(
                    METADATA_NAMESPACE,
                    &[("peer", peer.name), ("clusterUUID", peer.cluster_uuid), ("network", peer.network)],
                )),
                name,
                ..Default::default()
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
    from_meta.or_else(|| c.name.rsplit_once("|multicloud-").map(|(_, p)| p.to_string())).unwrap_or_else(|| "?".into())
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

fn decode_tls(peer: &str, any: &Any) -> Result<UpstreamTlsContext, BuildError> {
    if any.type_url != UPSTREAM_TLS_TYPE_URL {
        return Err(malformed(peer, "transport_socket.typed_config", format!("is a {}, not an UpstreamTlsContext", any.type_url)));
    }
    UpstreamTlsContext::decode(any.value.as_slice()).map_err(|e| malformed(peer, "transport_socket.typed_config", e.to_string()))
}

// ------------------------------------------------------------ endpoints --

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

fn check_gateways<'a>(p: &PeerView<'a>) -> Result<Vec<&'a IngressGateway>, BuildError> {
    if p.gateways.is_empty() {
        return Err(BuildError::Address { peer: p.name.into(), field: "ingressGateways".into(), cause: "lists no gateway".into() });
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, g) in p.gateways.iter().enumerate() {
        let field = format!("ingressGateways[{i}].address");
        if g.address.is_empty() {
            return Err(BuildError::Address { peer: p.name.into(), field, cause: "is empty".into() });
        }
        if g.address.parse::<std::net::IpAddr>().is_err() {
            let cause = if is_host(&g.address) {
                format!("{:?} is a DNS name; EDS endpoints must be IP addresses (resolve it before building)", g.address)
            } else {
                format!("{:?} is not an IP address", g.address)
            };
            return Err(BuildError::Address { peer: p.name.into(), field, cause });
        }
        if g.port == 0 {
            return Err(BuildError::Port { peer: p.name.into(), field: format!("ingressGateways[{i}].port") });
        }
        if seen.insert((g.address.as_str(), g.port)) {
            out.push(g);
        }
    }
    Ok(out)
}

/// One `ClusterLoadAssignment` per cluster of [`remote_clusters`]: the peer's
/// ingress gateways (duplicates once), weighted by [`gateway_weights`], in
/// locality `{region: "multicloud", zone: <peer name>}`, each endpoint
/// carrying Istio's `istio: {network: <peer network>}` metadata.
pub fn remote_endpoints(peer: &PeerView) -> Result<Vec<ClusterLoadAssignment>, BuildError> {
    check_services(peer)?;
    let gateways = check_gateways(peer)?;
    let mut out = Vec::new();
    for s in peer.services {
        let weights = gateway_weights(s.ready_endpoints, gateways.len());
        let lb_endpoints: Vec<LbEndpoint> = gateways
            .iter()
            .zip(&weights)
            .map(|(g, w)| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: g.address.clone(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(g.port))),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                load_balancing_weight: u32v(*w),
                metadata: Some(metadata("istio", &[("network", peer.network)])),
                ..Default::default()
            })
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
        .or_else(|| cla.cluster_name.rsplit_once("|multicloud-").map(|(_, p)| p.to_string()))
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

// ------------------------------------------------------------ packaging --

/// Everything for `peers`, packed for `DiscoveryResponse`s: secrets (the
/// trust bundle, then each peer's root), clusters, load assignments. Names
/// are unique across peers; a name repeated (two peers of one name) is an error.
pub struct MeshResources {
    pub secrets: Vec<Any>,
    pub clusters: Vec<Any>,
    pub endpoints: Vec<Any>,
}

/// Builds and validates everything for `peers` with the given sources.
pub fn mesh_resources(
    local_root_pem: &str,
    peers: &[PeerView],
    client: &ClientIdentity,
    sources: &Sources,
) -> Result<MeshResources, BuildError> {
    let mut secrets = vec![pack_any(trust_bundle_secret(local_root_pem, peers)?)];
    let (mut clusters, mut endpoints) = (Vec::new(), Vec::new());
    let (mut names, mut uuids) = (HashSet::new(), HashSet::new());
    for p in peers {
        if !names.insert(p.name) {
            return Err(malformed(p.name, "name", "two peers have this name"));
        }
        if !uuids.insert(p.cluster_uuid) {
            return Err(malformed(p.name, "clusterUUID", "another peer has this cluster UUID"));
        }
        secrets.push(pack_any(peer_root_secret(p)?));
        clusters.extend(remote_clusters_with(p, client, sources)?.into_iter().map(pack_any));
        endpoints.extend(remote_endpoints(p)?.into_iter().map(pack_any));
    }
    Ok(MeshResources { secrets, clusters, endpoints })
}
