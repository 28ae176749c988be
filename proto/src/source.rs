//! Where the resources a built resource refers to come from: the ADS
//! stream, a gRPC xDS/SDS server, or files (Envoy without an xDS server),
//! and who the proxy is when it dials a peer.

use envoy_types::pb::envoy::config::core::v3::{
    api_config_source, config_source, grpc_service, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
    PathConfigSource,
};

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

/// The file a [`ConfigSourceKind::FilesIn`] source reads for `resource_name`.
pub fn resource_file_name(resource_name: &str) -> String {
    format!("{}.pb", resource_name.replace('/', "_"))
}

/// The ADS config source.
pub fn config_source_ads() -> ConfigSource {
    config_source(&ConfigSourceKind::Ads, "")
}

/// The config source of `resource_name` from `kind`.
pub fn config_source(kind: &ConfigSourceKind, resource_name: &str) -> ConfigSource {
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
