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

/// The ADS config source.
pub fn config_source_ads() -> ConfigSource {
    config_source(&ConfigSourceKind::Ads, "")
}

/// The config source of `resource_name` from `kind`.
pub fn config_source_for(kind: &ConfigSourceKind, resource_name: &str) -> ConfigSource {
    config_source(kind, resource_name)
}

/// A validation-context secret of `name` trusting `pem`.
pub fn validation_secret_named(name: &str, pem: String) -> Secret {
    validation_secret(name.into(), pem)
}

/// The outlier detection every hop to a remote gateway gets (see [`outlier_detection`]).
pub fn outlier_detection_default() -> OutlierDetection {
    outlier_detection()
}

/// The circuit breakers every remote cluster gets (see [`circuit_breakers`]).
pub fn circuit_breakers_default() -> CircuitBreakers {
    circuit_breakers()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use multicloud_core::metadata::ServicePort;

    const UUID_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";
    const UUID_C: &str = "0c0c0c0c-0000-4000-8000-00000000000c";

    fn root(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().pem()
    }

    struct Doc {
        root: String,
        gateways: Vec<IngressGateway>,
        services: Vec<ExportedService>,
    }

    fn doc() -> Doc {
        Doc {
            root: root("root of b"),
            gateways: vec![
                IngressGateway { address: "10.0.0.1".into(), port: 15443 },
                IngressGateway { address: "10.0.0.2".into(), port: 15443 },
            ],
            services: vec![
                ExportedService {
                    hostname: "foo.abc.svc.cluster.local".into(),
                    ports: vec![
                        ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) },
                        ServicePort { name: "grpc".into(), port: 9090, protocol: None },
                    ],
                    ready_endpoints: 5,
                },
                ExportedService {
                    hostname: "bar.abc.svc.cluster.local".into(),
                    ports: vec![ServicePort { name: "tcp".into(), port: 5432, protocol: None }],
                    ready_endpoints: 0,
                },
            ],
        }
    }

    fn view<'a>(name: &'a str, uuid: &'a str, d: &'a Doc) -> PeerView<'a> {
        PeerView { name, cluster_uuid: uuid, root_ca_pem: &d.root, network: "net-b", gateways: &d.gateways, services: &d.services }
    }

    const CLIENT: ClientIdentity = ClientIdentity { cert_secret: "default", sds_cluster: "sds-grpc" };

    fn roundtrip<M: prost::Message + prost::Name + Default + Clone + PartialEq + std::fmt::Debug>(m: &M) -> M {
        let any = pack_any(m.clone());
        assert_eq!(any.type_url, M::type_url());
        let back = M::decode(any.value.as_slice()).unwrap();
        assert_eq!(&back, m);
        back
    }

    fn inline_ca(s: &Secret) -> String {
        match &s.r#type {
            Some(secret::Type::ValidationContext(vc)) => match vc.trusted_ca.as_ref().unwrap().specifier.as_ref().unwrap() {
                data_source::Specifier::InlineString(s) => s.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn meta_str(m: &Option<Metadata>, ns: &str, key: &str) -> String {
        match &m.as_ref().unwrap().filter_metadata[ns].fields[key].kind {
            Some(value::Kind::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_follow_istio_and_keep_remote_copies_apart() {
        assert_eq!(sni("foo.abc.svc.cluster.local", 80), "outbound_.80_._.foo.abc.svc.cluster.local");
        assert_eq!(remote_cluster_name("b", "foo.abc.svc.cluster.local", 80), "outbound|80||foo.abc.svc.cluster.local|multicloud-b");
        assert_ne!(remote_cluster_name("b", "foo.abc.svc.cluster.local", 80), "outbound|80||foo.abc.svc.cluster.local");
        assert_eq!(peer_root_secret_name(UUID_B), format!("multicloud-peer-root~{UUID_B}"));
        assert_eq!(resource_file_name("outbound|80||h|multicloud-b"), "outbound|80||h|multicloud-b.pb");
    }

    #[test]
    fn trust_bundle_holds_local_and_every_peer_root() {
        let (b, c) = (doc(), doc());
        let local = root("local root");
        let s = trust_bundle_secret(&local, &[view("c", UUID_C, &c), view("b", UUID_B, &b)]).unwrap();
        let s = roundtrip(&s);
        assert_eq!(s.name, TRUST_BUNDLE_SECRET);
        let bundle = CertBundle::from_pem(&inline_ca(&s)).unwrap();
        let want: Vec<Vec<u8>> = [&local, &b.root, &c.root].iter().map(|p| CertBundle::from_pem(p).unwrap().certs_der.remove(0)).collect();
        assert_eq!(bundle.certs_der, want, "local first, then peers by name");
        // The same root twice is carried once.
        let s = trust_bundle_secret(&b.root, &[view("b", UUID_B, &b)]).unwrap();
        assert_eq!(CertBundle::from_pem(&inline_ca(&s)).unwrap().certs_der.len(), 1);
        // No peer yet: the local root alone.
        assert_eq!(CertBundle::from_pem(&inline_ca(&trust_bundle_secret(&local, &[]).unwrap())).unwrap().certs_der.len(), 1);
    }

    #[test]
    fn peer_root_secret_holds_only_that_root() {
        let b = doc();
        let s = roundtrip(&peer_root_secret(&view("b", UUID_B, &b)).unwrap());
        assert_eq!(s.name, peer_root_secret_name(UUID_B));
        assert_eq!(CertBundle::from_pem(&inline_ca(&s)).unwrap(), CertBundle::from_pem(&b.root).unwrap());
    }

    #[test]
    fn remote_clusters_are_eds_with_istio_mtls_to_the_peer() {
        let b = doc();
        let clusters = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap();
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbound|80||foo.abc.svc.cluster.local|multicloud-b",
                "outbound|9090||foo.abc.svc.cluster.local|multicloud-b",
                "outbound|5432||bar.abc.svc.cluster.local|multicloud-b"
            ]
        );
        let c = roundtrip(&clusters[0]);
        assert_eq!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)));
        let eds = c.eds_cluster_config.as_ref().unwrap().eds_config.as_ref().unwrap();
        assert_eq!(eds.config_source_specifier, Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})));
        assert_eq!(eds.resource_api_version, ApiVersion::V3 as i32);
        assert_eq!(c.connect_timeout, secs(2));
        let od = c.outlier_detection.unwrap();
        assert_eq!((od.consecutive_5xx, od.consecutive_gateway_failure), (u32v(5), u32v(3)));
        assert_eq!((od.interval, od.base_ejection_time, od.max_ejection_percent), (secs(5), secs(15), u32v(100)));
        assert_eq!(od.enforcing_consecutive_gateway_failure, u32v(100));
        assert_eq!(c.circuit_breakers.unwrap().thresholds[0].max_requests, u32v(u32::MAX));
        assert_eq!(meta_str(&c.metadata, METADATA_NAMESPACE, "peer"), "b");
        assert_eq!(meta_str(&c.metadata, METADATA_NAMESPACE, "clusterUUID"), UUID_B);
        assert_eq!(meta_str(&c.metadata, METADATA_NAMESPACE, "network"), "net-b");

        let ts = c.transport_socket.unwrap();
        assert_eq!(ts.name, "envoy.transport_sockets.tls");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else { panic!() };
        let tls = decode_tls("b", &any).unwrap();
        assert_eq!(tls.sni, "outbound_.80_._.foo.abc.svc.cluster.local");
        let common = tls.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
        let cert = &common.tls_certificate_sds_secret_configs[0];
        assert_eq!(cert.name, "default");
        let Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) = &cert.sds_config.as_ref().unwrap().config_source_specifier
        else {
            panic!("{cert:?}")
        };
        assert_eq!(api.api_type, api_config_source::ApiType::Grpc as i32);
        assert_eq!(
            api.grpc_services[0].target_specifier,
            Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: "sds-grpc".into(),
                ..Default::default()
            }))
        );
        let Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(trust)) = common.validation_context_type
        else {
            panic!()
        };
        assert_eq!(trust.name, peer_root_secret_name(UUID_B), "pinned to the peer's own root");
        assert_eq!(
            trust.sds_config.unwrap().config_source_specifier,
            Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
        );

        // "ads" as the SDS cluster: the certificate comes over ADS too.
        let c = remote_clusters(&view("b", UUID_B, &b), &ClientIdentity { cert_secret: "default", sds_cluster: "ads" }).unwrap().remove(0);
        let Some(transport_socket::ConfigType::TypedConfig(any)) = c.transport_socket.unwrap().config_type else { panic!() };
        let cert = decode_tls("b", &any).unwrap().common_tls_context.unwrap().tls_certificate_sds_secret_configs.remove(0);
        assert_eq!(
            cert.sds_config.unwrap().config_source_specifier,
            Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
        );
    }

    #[test]
    fn file_sources_name_one_file_per_resource() {
        let b = doc();
        let dir = ConfigSourceKind::FilesIn("/x".into());
        let sources = Sources { eds: dir.clone(), trust: dir.clone(), cert: dir };
        let c = remote_clusters_with(&view("b", UUID_B, &b), &CLIENT, &sources).unwrap().remove(0);
        let Some(config_source::ConfigSourceSpecifier::PathConfigSource(p)) =
            c.eds_cluster_config.unwrap().eds_config.unwrap().config_source_specifier
        else {
            panic!()
        };
        assert_eq!(p.path, format!("/x/{}", resource_file_name(&c.name)));
    }

    #[test]
    fn remote_endpoints_are_the_peer_gateways_weighted_by_ready_endpoints() {
        let b = doc();
        let clas = remote_endpoints(&view("b", UUID_B, &b)).unwrap();
        let clusters = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap();
        assert_eq!(clas.iter().map(|c| &c.cluster_name).collect::<Vec<_>>(), clusters.iter().map(|c| &c.name).collect::<Vec<_>>());
        let cla = roundtrip(&clas[0]);
        assert_eq!(cla.endpoints.len(), 1);
        let l = &cla.endpoints[0];
        assert_eq!(l.locality, Some(Locality { region: "multicloud".into(), zone: "b".into(), ..Default::default() }));
        assert_eq!(l.load_balancing_weight, u32v(5));
        let got: Vec<(String, u32, u32)> = l
            .lb_endpoints
            .iter()
            .map(|e| {
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!() };
                let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().unwrap().address.clone() else { panic!() };
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else { panic!() };
                assert_eq!(meta_str(&e.metadata, "istio", "network"), "net-b");
                (sa.address, port, e.load_balancing_weight.unwrap().value)
            })
            .collect();
        assert_eq!(got, [("10.0.0.1".into(), 15443, 3), ("10.0.0.2".into(), 15443, 2)]);
        // bar has no ready endpoint: still reachable, weight 1 per gateway.
        let bar: Vec<u32> = clas[2].endpoints[0].lb_endpoints.iter().map(|e| e.load_balancing_weight.unwrap().value).collect();
        assert_eq!(bar, [1, 1]);
    }

    #[test]
    fn weights_split_ready_endpoints_over_gateways_never_zero() {
        assert_eq!(gateway_weights(5, 2), [3, 2]);
        assert_eq!(gateway_weights(7, 3), [3, 2, 2]);
        assert_eq!(gateway_weights(10, 1), [10]);
        assert_eq!(gateway_weights(0, 2), [1, 1]);
        assert_eq!(gateway_weights(1, 3), [1, 1, 1]);
        assert_eq!(gateway_weights(u32::MAX, 1), [u32::MAX]);
        assert_eq!(gateway_weights(4, 0), Vec::<u32>::new());
        for (ready, g) in [(0u32, 1usize), (1, 4), (9, 4), (100, 7), (64, 64)] {
            let w = gateway_weights(ready, g);
            assert_eq!(w.iter().map(|x| u64::from(*x)).sum::<u64>(), u64::from(ready.max(1)).max(g as u64));
            assert!(w.iter().max().unwrap() - w.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn names_are_unique_across_peers_exporting_the_same_hostname() {
        let (b, c) = (doc(), doc());
        let local = root("local");
        let all = mesh_resources(&local, &[view("b", UUID_B, &b), view("c", UUID_C, &c)], &CLIENT, &Sources::for_client(&CLIENT)).unwrap();
        let mut names: Vec<String> = all.clusters.iter().map(|a| Cluster::decode(a.value.as_slice()).unwrap().name).collect();
        assert_eq!(names.len(), 6);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 6);
        let mut secrets: Vec<String> = all.secrets.iter().map(|a| Secret::decode(a.value.as_slice()).unwrap().name).collect();
        secrets.dedup();
        assert_eq!(secrets.len(), 3);
        assert_eq!(all.endpoints.len(), 6);
        assert!(all.secrets.iter().all(|a| a.type_url == SECRET_TYPE_URL));
        assert!(all.clusters.iter().all(|a| a.type_url == CLUSTER_TYPE_URL));
        assert!(all.endpoints.iter().all(|a| a.type_url == ENDPOINT_TYPE_URL));
        // Two peers of one name (or one UUID) would collide: refused.
        let e =
            mesh_resources(&local, &[view("b", UUID_B, &b), view("b", UUID_C, &c)], &CLIENT, &Sources::for_client(&CLIENT)).err().unwrap();
        assert_eq!((e.peer(), e.field()), ("b", "name"));
        let e =
            mesh_resources(&local, &[view("b", UUID_B, &b), view("c", UUID_B, &c)], &CLIENT, &Sources::for_client(&CLIENT)).err().unwrap();
        assert_eq!((e.peer(), e.field()), ("c", "clusterUUID"));
    }

    #[test]
    fn a_malformed_root_is_refused_naming_peer_and_field() {
        let mut b = doc();
        b.root = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
        for e in
            [peer_root_secret(&view("b", UUID_B, &b)).unwrap_err(), trust_bundle_secret(&root("l"), &[view("b", UUID_B, &b)]).unwrap_err()]
        {
            assert!(matches!(e, BuildError::Root { .. }), "{e}");
            assert_eq!((e.peer(), e.field()), ("b", "rootCA"));
            assert!(e.to_string().starts_with("peer b: rootCA: not a usable root CA"), "{e}");
        }
        // A key alone is no root either.
        b.root = multicloud_core::pem::encode("PRIVATE KEY", b"x");
        assert_eq!(peer_root_secret(&view("b", UUID_B, &b)).unwrap_err().field(), "rootCA");
        // The local root too.
        let e = trust_bundle_secret("junk", &[]).unwrap_err();
        assert_eq!((e.peer(), e.field()), (LOCAL, "rootCA"));
        // And a built secret tampered with afterwards.
        let mut s = peer_root_secret(&view("b", UUID_B, &doc())).unwrap();
        s.r#type = Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource { specifier: Some(data_source::Specifier::InlineString("x".into())), ..Default::default() }),
            ..Default::default()
        }));
        let e = validate_secret(&s).unwrap_err();
        assert_eq!((e.peer(), e.field()), (UUID_B, "validation_context.trusted_ca"));
    }

    #[test]
    fn an_empty_or_unresolved_address_is_refused_naming_peer_and_field() {
        let mut b = doc();
        b.gateways[1].address = String::new();
        let e = remote_endpoints(&view("b", UUID_B, &b)).unwrap_err();
        assert!(matches!(e, BuildError::Address { .. }), "{e}");
        assert_eq!((e.peer(), e.field()), ("b", "ingressGateways[1].address"));
        assert_eq!(e.to_string(), "peer b: ingressGateways[1].address: is empty");
        b.gateways[1].address = "gw.example.com".into();
        let e = remote_endpoints(&view("b", UUID_B, &b)).unwrap_err();
        assert!(e.to_string().contains("DNS name"), "{e}");
        b.gateways.clear();
        assert_eq!(remote_endpoints(&view("b", UUID_B, &b)).unwrap_err().field(), "ingressGateways");
        // A built assignment tampered with afterwards.
        let mut cla = remote_endpoints(&view("b", UUID_B, &doc())).unwrap().remove(0);
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut cla.endpoints[0].lb_endpoints[0].host_identifier else { panic!() };
        let Some(address::Address::SocketAddress(sa)) = &mut ep.address.as_mut().unwrap().address else { panic!() };
        sa.address.clear();
        let e = validate_load_assignment(&cla).unwrap_err();
        assert_eq!((e.peer(), e.field()), ("b", "endpoints[0].lb_endpoints[0].endpoint.address"));
    }

    #[test]
    fn a_zero_port_is_refused_naming_peer_and_field() {
        let mut b = doc();
        b.gateways[0].port = 0;
        let e = remote_endpoints(&view("b", UUID_B, &b)).unwrap_err();
        assert_eq!(e, BuildError::Port { peer: "b".into(), field: "ingressGateways[0].port".into() });
        assert_eq!(e.to_string(), "peer b: ingressGateways[0].port: port 0 is not a port");
        let mut b = doc();
        b.services[0].ports[1].port = 0;
        let e = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap_err();
        assert_eq!((e.peer(), e.field()), ("b", "services[0].ports[1].port"));
        let mut cla = remote_endpoints(&view("b", UUID_B, &doc())).unwrap().remove(0);
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut cla.endpoints[0].lb_endpoints[1].host_identifier else { panic!() };
        let Some(address::Address::SocketAddress(sa)) = &mut ep.address.as_mut().unwrap().address else { panic!() };
        sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(0));
        let e = validate_load_assignment(&cla).unwrap_err();
        assert_eq!((e.peer(), e.field()), ("b", "endpoints[0].lb_endpoints[1].endpoint.address.port_value"));
    }

    #[test]
    fn other_bad_inputs_and_tampered_clusters_are_refused() {
        let b = doc();
        let mut v = view("b", UUID_B, &b);
        v.cluster_uuid = "nope";
        assert_eq!(remote_clusters(&v, &CLIENT).unwrap_err().field(), "clusterUUID");
        let mut v = view("b", UUID_B, &b);
        v.network = "";
        assert_eq!(remote_endpoints(&v).unwrap_err().field(), "networkName");
        assert_eq!(remote_clusters(&view("", UUID_B, &b), &CLIENT).unwrap_err().field(), "name");
        assert_eq!(remote_clusters(&view("b|x", UUID_B, &b), &CLIENT).unwrap_err().field(), "name");
        let mut d = doc();
        d.services[1].hostname = d.services[0].hostname.clone();
        d.services[1].ports[0].port = 80;
        let e = remote_clusters(&view("b", UUID_B, &d), &CLIENT).unwrap_err();
        assert_eq!((e.peer(), e.field()), ("b", "services[1].ports[0]"));
        let e = remote_clusters(&view("b", UUID_B, &b), &ClientIdentity { cert_secret: "", sds_cluster: "ads" }).unwrap_err();
        assert_eq!(e.field(), "client.cert_secret");

        let good = remote_clusters(&view("b", UUID_B, &b), &CLIENT).unwrap().remove(0);
        let mut c = good.clone();
        c.transport_socket = None;
        assert_eq!(validate_cluster(&c).unwrap_err().to_string(), "peer b: transport_socket: is missing");
        let mut c = good.clone();
        c.eds_cluster_config = None;
        assert_eq!(validate_cluster(&c).unwrap_err().field(), "eds_cluster_config.eds_config");
        let mut c = good;
        c.name.clear();
        assert_eq!(validate_cluster(&c).unwrap_err().field(), "name");
    }
}
