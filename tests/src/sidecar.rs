//! A workload sidecar Envoy fed by its cluster's agent over ADS (node role
//! `sidecar`): remote services arrive by CDS/EDS, trust by SDS. Its inbound
//! listener (`inbound`, mTLS) presents the workload certificate (SDS
//! `default`) and trusts the agent's trust bundle (SDS
//! `multicloud-trust-bundle`), as an Istio sidecar's inbound chain does.

use crate::envoy::EnvoySpec;
use crate::gateway::{ads_bootstrap, XdsClient};
use crate::{hosts, SimCluster};
use std::net::SocketAddr;

/// The inbound filter chain's mTLS, as an Istio sidecar's: the workload
/// certificate (SDS `default`), callers validated against the agent's
/// trust bundle, a client certificate required.
const INBOUND_TLS: &str = r#"    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {ads: {}, resource_api_version: V3}
            validation_context_sds_secret_config:
              name: multicloud-trust-bundle
              sds_config: {ads: {}, resource_api_version: V3}
"#;

/// A sidecar of `cluster` fed by the agent at `xds` (whose certificate it presents).
pub fn spec(cluster: SimCluster, xds: &XdsClient, delta: bool) -> EnvoySpec {
    let (node, dynamic, agent_cluster) = ads_bootstrap("sidecar", xds, delta);
    let ip = cluster.ip(hosts::SIDECAR);
    let listener = format!(
        r#"  listeners:
  - name: inbound
    address: {{socket_address: {{address: {ip}, port_value: 0}}}}
    filter_chains:
{INBOUND_TLS}      filters:
      - name: envoy.filters.network.direct_response
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config
          response: {{inline_string: "inbound\n"}}
"#
    );
    EnvoySpec {
        name: format!("sidecar-{}{}", cluster.0, if delta { "-delta" } else { "" }),
        cluster,
        host: hosts::SIDECAR,
        bootstrap: format!("{node}{dynamic}static_resources:\n{listener}  clusters:\n{agent_cluster}"),
        files: vec![],
    }
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
    pub fn spec(&self) -> EnvoySpec {
        let (node, dynamic, agent_cluster) = ads_bootstrap("sidecar", &self.xds, false);
        let ip = self.cluster.ip(hosts::SIDECAR);
        let vhost = |h: &str, cluster: &str| {
            format!(
                r#"            - name: "{h}"
              domains: ["{h}", "{h}:80"]
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: "{cluster}"
                  timeout: 5s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,reset
                    num_retries: 2
                    retry_host_predicate: [{{name: envoy.retry_host_predicates.previous_hosts, typed_config: {{"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}}}]
                    host_selection_retry_max_attempts: 5
"#
            )
        };
        let mut vhosts: String = self.services.iter().map(|h| vhost(h, &multicloud_proto::traffic::sameness_cluster_name(h, 80))).collect();
        let (inbound, app) = (self.inbound_port, self.app);
        let (mut local_cluster, mut files) = (String::new(), vec![]);
        if let Some(tls) = &self.local_route {
            files = vec![
                ("local-route/cert.pem".to_string(), tls.cert_pem.clone().into_bytes()),
                ("local-route/key.pem".to_string(), tls.key_pem.clone().into_bytes()),
                ("local-route/root.pem".to_string(), tls.root_pem.clone().into_bytes()),
            ];
            vhosts.push_str(&vhost(LOCAL_ROUTE_HOST, LOCAL_ROUTE_CLUSTER));
            local_cluster = format!(
                r#"  - name: {LOCAL_ROUTE_CLUSTER}
    type: STATIC
    connect_timeout: 2s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: "{sni}"
        common_tls_context:
          alpn_protocols: [{alpn}]
          tls_certificates:
          - certificate_chain: {{filename: "{{dir}}/local-route/cert.pem"}}
            private_key: {{filename: "{{dir}}/local-route/key.pem"}}
          validation_context:
            trusted_ca: {{filename: "{{dir}}/local-route/root.pem"}}
    load_assignment:
      cluster_name: {LOCAL_ROUTE_CLUSTER}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {inbound}}}}}}}
"#,
                sni = multicloud_proto::mesh::sni(crate::mesh::FOO, 80),
                alpn = multicloud_proto::mesh::ALPN.join(", "),
            );
        }
        let bootstrap = format!(
            r#"{node}{dynamic}static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: {ip}, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            # The merged clusters arrive later, by CDS from the agent.
            validate_clusters: false
            virtual_hosts:
{vhosts}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  - name: inbound
    address: {{socket_address: {{address: {ip}, port_value: {inbound}}}}}
    filter_chains:
{INBOUND_TLS}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{uri: true}}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
{local_cluster}{agent_cluster}"#,
            app.ip(),
            app.port()
        );
        EnvoySpec { name: format!("sidecar-{}", self.cluster.0), cluster: self.cluster, host: hosts::SIDECAR, bootstrap, files }
    }
}
