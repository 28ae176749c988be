//! A workload sidecar Envoy fed by its cluster's agent over ADS (node role
//! `sidecar`): remote services arrive by CDS/EDS, trust by SDS. Its inbound
//! listener (`inbound`, mTLS) presents the workload certificate (SDS
//! `default`) and trusts the agent's trust bundle (SDS
//! `multicloud-trust-bundle`), as an Istio sidecar's inbound chain does.

use crate::envoy::EnvoySpec;
use crate::gateway::ads_bootstrap;
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

pub fn spec(cluster: SimCluster, xds: SocketAddr, delta: bool) -> EnvoySpec {
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
    pub xds: SocketAddr,
    pub inbound_port: u16,
    pub app: SocketAddr,
    /// Hostnames (port 80) the application calls.
    pub services: Vec<String>,
}

impl TrafficSidecar {
    pub fn spec(&self) -> EnvoySpec {
        let (node, dynamic, agent_cluster) = ads_bootstrap("sidecar", self.xds, false);
        let ip = self.cluster.ip(hosts::SIDECAR);
        let vhosts: String = self
            .services
            .iter()
            .map(|h| {
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
"#,
                    cluster = multicloud_proto::traffic::sameness_cluster_name(h, 80)
                )
            })
            .collect();
        let (inbound, app) = (self.inbound_port, self.app);
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
{agent_cluster}"#,
            app.ip(),
            app.port()
        );
        EnvoySpec { name: format!("sidecar-{}", self.cluster.0), cluster: self.cluster, host: hosts::SIDECAR, bootstrap, files: vec![] }
    }
}
