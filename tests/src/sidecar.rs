//! A workload sidecar Envoy fed by its cluster's agent over ADS (node role
//! `sidecar`): remote services arrive by CDS/EDS, trust by SDS. Its inbound
//! listener (`inbound`, mTLS) presents the workload certificate (SDS
//! `default`) and trusts the agent's trust bundle (SDS
//! `multicloud-trust-bundle`), as an Istio sidecar's inbound chain does.

use crate::envoy::EnvoySpec;
use crate::gateway::ads_bootstrap;
use crate::{hosts, SimCluster};
use std::net::SocketAddr;

pub fn spec(cluster: SimCluster, xds: SocketAddr, delta: bool) -> EnvoySpec {
    let (node, dynamic, agent_cluster) = ads_bootstrap("sidecar", xds, delta);
    let ip = cluster.ip(hosts::SIDECAR);
    let listener = format!(
        r#"  listeners:
  - name: inbound
    address: {{socket_address: {{address: {ip}, port_value: 0}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {{ads: {{}}, resource_api_version: V3}}
            validation_context_sds_secret_config:
              name: multicloud-trust-bundle
              sds_config: {{ads: {{}}, resource_api_version: V3}}
      filters:
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
