//! A workload sidecar Envoy fed by its cluster's agent over ADS (node role
//! `sidecar`): remote services arrive by CDS/EDS, trust by SDS. Its inbound
//! listener (`inbound`, mTLS) presents the workload certificate (SDS
//! `default`) and trusts the agent's trust bundle (SDS
//! `multicloud-trust-bundle`), as an Istio sidecar's inbound chain does.
//! The bootstraps are typed ([`crate::fixtures::dp`]).

use crate::envoy::EnvoySpec;
use crate::fixtures::dp;
use crate::gateway::XdsClient;
use crate::{hosts, SimCluster};
use multicloud_core::naming::{sameness_cluster_name, sni, TRUST_BUNDLE_SECRET};
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions;
use multicloud_proto::envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
use multicloud_proto::envoy_types::pb::envoy::config::route::v3::{retry_policy, route, RetryPolicy, Route, RouteAction};
use multicloud_proto::envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponse;
use multicloud_proto::envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
use multicloud_proto::envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
};
use multicloud_proto::envoy_types::pb::google::protobuf::BoolValue;
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::mesh::ALPN;
use multicloud_proto::parts::{secs, tls_socket, u32v};
use std::net::SocketAddr;

/// The SDS name of the workload certificate (Istio's).
const WORKLOAD_CERT: &str = "default";

/// The inbound filter chain of `filters`, with an Istio sidecar's mTLS: the
/// workload certificate (SDS `default`), callers validated against the
/// agent's trust bundle, a client certificate required.
fn inbound_chain(filters: Vec<Filter>) -> FilterChain {
    FilterChain { transport_socket: Some(tls_socket(dp::inbound_mtls(WORKLOAD_CERT, TRUST_BUNDLE_SECRET))), filters, ..Default::default() }
}

/// A sidecar of `cluster` fed by the agent at `xds` (whose certificate it presents).
pub fn spec(cluster: SimCluster, xds: &XdsClient, delta: bool) -> EnvoySpec {
    let mut b = dp::ads_bootstrap("sidecar", xds, delta);
    let inbound = Filter {
        name: "envoy.filters.network.direct_response".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(DirectResponse { response: dp::inline("inbound\n") }))),
    };
    let addr = SocketAddr::from((cluster.ip(hosts::SIDECAR), 0));
    dp::static_resources(&mut b).listeners.push(dp::listener("inbound", addr, vec![inbound_chain(vec![inbound])]));
    EnvoySpec::typed(format!("sidecar-{}{}", cluster.0, if delta { "-delta" } else { "" }), cluster, hosts::SIDECAR, b)
}

/// A workload's sidecar in a traffic test bed: the application calls the
/// `outbound` listener (plain HTTP, as iptables would hand it over) by a
/// service's usual name, and is routed to that service's merged cluster
/// from the agent (`outbound|<port>||<host>|multicloud`): this part of the
/// bootstrap stands in for istiod's route plus the route patch `deploy/`
/// applies. The `inbound` listener (fixed port: it is this cluster's
/// endpoint of the services it runs) terminates mTLS with the workload
/// certificate, trusts the agent's trust bundle, tells the application its
/// caller in `x-forwarded-client-cert` (URI), and forwards to the echo app.
pub struct TrafficSidecar {
    pub cluster: SimCluster,
    /// The agent, and the workload certificate the sidecar presents to it.
    pub xds: XdsClient,
    pub inbound_port: u16,
    pub app: SocketAddr,
    /// Hostnames (port 80) the application calls.
    pub services: Vec<String>,
    /// Adds the virtual host [`LOCAL_ROUTE_HOST`]: a direct local call, the
    /// same sidecar path without any gateway (outbound → mTLS → this
    /// sidecar's own inbound → the echo app), as the benchmark's baseline.
    pub local_route: Option<LocalRouteTls>,
    /// The inbound port closes each connection after one request.
    pub one_request_per_connection: bool,
}

/// The client side of the direct local call: the workload certificate the
/// agent serves as SDS `default` and the local root (SDS
/// `multicloud-local-root`), as files. Not over ADS: a static cluster whose
/// TLS comes from SDS over ADS crashes Envoy 1.40 at start (SIGSEGV while
/// loading the bootstrap's clusters, before the ADS stream exists), and the
/// agent serves SDS on ADS only. The handshake is the same either way.
#[derive(Clone)]
pub struct LocalRouteTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub root_pem: String,
}

/// The Host of the direct local call ([`TrafficSidecar::local_route`]).
pub const LOCAL_ROUTE_HOST: &str = "local.foo";
/// Its static cluster: this sidecar's own inbound port, with the TLS the
/// merged cluster uses for local endpoints (the workload certificate,
/// validated against the local root only, Istio's SNI and ALPN for `foo.abc:80`).
const LOCAL_ROUTE_CLUSTER: &str = "local-foo";

impl TrafficSidecar {
    /// The route to `cluster` for Host `h` (and `h:80`): retried on another
    /// host when a connection fails, as Istio's default retry policy does.
    fn vhost(h: &str, cluster: &str) -> multicloud_proto::envoy_types::pb::envoy::config::route::v3::VirtualHost {
        let retry = RetryPolicy {
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,reset".into(),
            num_retries: u32v(2),
            retry_host_predicate: vec![retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(PreviousHostsPredicate::default()))),
            }],
            host_selection_retry_max_attempts: 5,
            ..Default::default()
        };
        let route = Route {
            r#match: dp::prefix("/"),
            action: Some(route::Action::Route(RouteAction { timeout: secs(5), retry_policy: Some(retry), ..dp::route_action(cluster) })),
            ..Default::default()
        };
        dp::virtual_host(h, &[h, &format!("{h}:80")], vec![route])
    }

    pub fn spec(&self) -> EnvoySpec {
        let mut b = dp::ads_bootstrap("sidecar", &self.xds, false);
        let ip = self.cluster.ip(hosts::SIDECAR);
        let mut vhosts: Vec<_> = self.services.iter().map(|h| Self::vhost(h, &sameness_cluster_name(h, 80))).collect();
        let mut files = vec![];
        let mut clusters = vec![dp::static_cluster("app", self.app)];
        if let Some(tls) = &self.local_route {
            files = vec![
                ("local-route/cert.pem".to_string(), tls.cert_pem.clone().into_bytes()),
                ("local-route/key.pem".to_string(), tls.key_pem.clone().into_bytes()),
                ("local-route/root.pem".to_string(), tls.root_pem.clone().into_bytes()),
            ];
            vhosts.push(Self::vhost(LOCAL_ROUTE_HOST, LOCAL_ROUTE_CLUSTER));
            let upstream = UpstreamTlsContext {
                sni: sni(crate::mesh::FOO, 80),
                common_tls_context: Some(CommonTlsContext {
                    alpn_protocols: ALPN.iter().map(|a| a.to_string()).collect(),
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: dp::file("local-route/cert.pem"),
                        private_key: dp::file("local-route/key.pem"),
                        ..Default::default()
                    }],
                    validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext { trusted_ca: dp::file("local-route/root.pem"), ..Default::default() },
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            };
            clusters.push(multicloud_proto::envoy_types::pb::envoy::config::cluster::v3::Cluster {
                connect_timeout: secs(2),
                transport_socket: Some(tls_socket(upstream)),
                ..dp::static_cluster(LOCAL_ROUTE_CLUSTER, SocketAddr::from((ip, self.inbound_port)))
            });
        }
        let mut outbound = dp::hcm("outbound", vhosts, vec![]);
        if let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = &mut outbound.route_specifier {
            // The merged clusters arrive later, by CDS from the agent.
            rc.validate_clusters = Some(BoolValue { value: false });
        }
        let mut inbound = dp::hcm("inbound", vec![dp::virtual_host("app", &["*"], vec![dp::route_to("app")])], vec![]);
        inbound.forward_client_cert_details = http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32;
        inbound.set_current_client_cert_details =
            Some(http_connection_manager::SetCurrentClientCertDetails { uri: true, ..Default::default() });
        if self.one_request_per_connection {
            inbound.common_http_protocol_options = Some(HttpProtocolOptions { max_requests_per_connection: u32v(1), ..Default::default() });
        }
        let sr = dp::static_resources(&mut b);
        sr.listeners.push(dp::listener(
            "outbound",
            SocketAddr::from((ip, 0)),
            vec![FilterChain { filters: vec![dp::hcm_filter(outbound)], ..Default::default() }],
        ));
        sr.listeners.push(dp::listener(
            "inbound",
            SocketAddr::from((ip, self.inbound_port)),
            vec![inbound_chain(vec![dp::hcm_filter(inbound)])],
        ));
        sr.clusters.extend(clusters);
        EnvoySpec { files, ..EnvoySpec::typed(format!("sidecar-{}", self.cluster.0), self.cluster, hosts::SIDECAR, b) }
    }
}
