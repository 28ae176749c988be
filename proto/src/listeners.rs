//! LDS: the gateway's mesh-port listener [`MESH_LISTENER`].
//!
//! - Passthrough: TLS inspector, one filter chain per exported service port
//!   (exact SNI) to a plain TCP proxy towards the local endpoints; the
//!   sidecars do mTLS end to end. Only exported services have a chain;
//!   anything else is closed.
//! - Identity-enforcing: one filter chain per peer (exact SNI
//!   [`peer_sni`]`(peer uuid)`), requiring a client certificate that
//!   validates against that peer's root only; then HTTP with the
//!   `multicloud-mesh` filter (ECDS, [`MESH_FILTER_NAME`]) which maps the
//!   chain's SNI to the peer, refuses services not exported to it and sets
//!   the trusted `x-multicloud-caller-*` headers after stripping any copy
//!   from outside; then routes by `:authority` ([`crate::routes`]).

use envoy_types::pb::envoy::config::core::v3::ExtensionConfigSource;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{common_tls_context, CommonTlsContext, DownstreamTlsContext};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use multicloud_core::naming::{peer_root_secret_name, peer_sni};

use crate::inputs::PeerView;
use crate::parts::{sds, socket, tls_socket};
use crate::routes::route_configuration;
use crate::source::{config_source, config_source_ads, ClientIdentity, Sources};
use crate::type_url;

/// The gateway's mesh-port listener.
pub const MESH_LISTENER: &str = "multicloud-mesh";
/// ECDS name (and plugin root id) of the filter in the identity-enforcing chains.
pub const MESH_FILTER_NAME: &str = "multicloud-mesh";

/// A passthrough chain: SNI `sni` to a TCP proxy to `cluster` (named alike).
pub fn passthrough_chain(sni: String) -> FilterChain {
    FilterChain {
        name: sni.clone(),
        filter_chain_match: Some(FilterChainMatch { server_names: vec![sni.clone()], ..Default::default() }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
                stat_prefix: sni.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(sni)),
                ..Default::default()
            }))),
        }],
        ..Default::default()
    }
}

/// An identity-enforcing chain for `peer`: its SNI, a client certificate
/// validated against its root only, the mesh filter, then `virtual_hosts`.
pub fn peer_chain(peer: &PeerView, client: &ClientIdentity, sources: &Sources, virtual_hosts: Vec<VirtualHost>) -> FilterChain {
    let trust = peer_root_secret_name(peer.cluster_uuid);
    let downstream = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(client.cert_secret, config_source(&sources.cert, client.cert_secret))],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                &trust,
                config_source_ads(),
            ))),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: format!("multicloud_mesh_{}", peer.name),
        forward_client_cert_details: http_connection_manager::ForwardClientCertDetails::Sanitize as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(route_configuration(
            format!("{MESH_LISTENER}~{}", peer.name),
            virtual_hosts,
        ))),
        http_filters: vec![
            HttpFilter {
                name: MESH_FILTER_NAME.into(),
                config_type: Some(http_filter::ConfigType::ConfigDiscovery(ExtensionConfigSource {
                    config_source: Some(config_source_ads()),
                    type_urls: vec![type_url::WASM_FILTER.into()],
                    ..Default::default()
                })),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    FilterChain {
        name: format!("peer~{}", peer.name),
        filter_chain_match: Some(FilterChainMatch { server_names: vec![peer_sni(peer.cluster_uuid)], ..Default::default() }),
        transport_socket: Some(tls_socket(downstream)),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
        }],
        ..Default::default()
    }
}

/// [`MESH_LISTENER`] on `listen`: the TLS inspector, then `chains`.
pub fn mesh_listener(listen: std::net::SocketAddr, chains: Vec<FilterChain>) -> Listener {
    let tls_inspector = ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
        ..Default::default()
    };
    Listener {
        name: MESH_LISTENER.into(),
        address: Some(socket(&listen.ip().to_string(), listen.port())),
        listener_filters: vec![tls_inspector],
        filter_chains: chains,
        ..Default::default()
    }
}
