//! A simulated cluster's ingress gateway: a real Envoy running the built
//! filter, configured the way `deploy/` configures it in Istio, with
//! `deploy/base/edge-filter.yaml`'s patches read at run time
//! ([`crate::manifests`]):
//!
//! - the filter's entry in the HTTP chain is the EnvoyFilter's (`disabled:
//!   true`, ECDS); only where its configuration comes from differs: a file
//!   the test rewrites atomically, which Envoy watches, or the agent's ADS
//!   stream (deploy/'s per-type `DELTA_GRPC` source is what
//!   tests/tests/xds_per_type.rs runs);
//! - the `/metadata/` route gets the EnvoyFilter's route patch (the
//!   `typed_per_filter_config` enabling the filter), so every other route
//!   runs without entering the Wasm VM;
//! - both routes lead to a [`RecordingUpstream`], so a test can prove that a
//!   metadata request never reaches the upstream.
//!
//! The ADS wiring to the agent (node, dynamic resources, the agent's
//! cluster) is typed ([`crate::fixtures::dp`]); the listeners and the other
//! clusters are YAML merged over it.

use crate::envoy::{Envoy, EnvoySpec};
use crate::fixtures::{dp, ClusterIdentity};
use crate::manifests::{self, yaml_flow};
use crate::upstream::RecordingUpstream;
use crate::{hosts, paths, wait_until, SimCluster};
use multicloud_proto::edge_filter;
use multicloud_proto::prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;

pub use multicloud_proto::edge_filter::FILTER_NAME;

/// The ECDS file Envoy watches: a binary `DiscoveryResponse` holding the
/// very resource the agent serves over ADS (`multicloud_proto::edge_filter`).
pub fn ecds_file(config_json: &str, version: &str) -> Vec<u8> {
    let wasm = paths::filter_wasm().display().to_string();
    multicloud_proto::discovery_response(
        edge_filter::EXTENSION_CONFIG_TYPE_URL,
        version,
        vec![edge_filter::resource(&wasm.as_str().into(), config_json)],
    )
    .encode_to_vec()
}

/// The ECDS source of a file `path` in the watched directory `dir`.
fn file_source(path: &str, dir: &str) -> serde_json::Value {
    serde_json::json!({"resource_api_version": "V3", "path_config_source": {"path": path, "watched_directory": {"path": dir}}})
}

/// The HTTP filter entry for the edge filter (deploy/'s), delivered by ECDS
/// from `{dir}/ecds/edge.pb`: one item of `http_filters`, indented for it.
pub fn edge_http_filter_yaml() -> String {
    let f = manifests::edge_http_filter(Some(file_source("{dir}/ecds/edge.pb", "{dir}/ecds")));
    format!("          - {}\n", yaml_flow(&f))
}

/// deploy/'s route patch enabling the edge filter, as a key of a route
/// indented for `routes` items.
pub fn enable_edge_filter_yaml() -> String {
    let patch = manifests::metadata_route_patch();
    format!("                typed_per_filter_config: {}\n", yaml_flow(&patch["typed_per_filter_config"]))
}

pub struct Gateway {
    pub cluster: SimCluster,
    pub envoy: Envoy,
    pub upstream: RecordingUpstream,
}

/// Whether a configuration push took effect.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Applied,
    Rejected,
}

/// The gateway's TLS listener (`edge_tls`) for the metadata endpoint.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Fixed, so peers' `metadataEndpoint` survives a restart.
    pub port: u16,
}

/// Where the filter's configuration comes from.
#[derive(Clone)]
pub enum EdgeSource {
    /// The test writes it (`{dir}/ecds/edge.pb`), starting with this JSON.
    Test(String),
    /// An agent writes it to this file.
    Agent(std::path::PathBuf),
    /// An agent serves it over ADS (state of the world, or delta).
    Ads { xds: XdsClient, delta: bool },
}

/// The service account Istio's default ingress gateway runs as; the agent's
/// default `--xds-gateway-identity` is its SPIFFE ID.
pub const GATEWAY_SERVICE_ACCOUNT: (&str, &str) = ("istio-system", "istio-ingressgateway-service-account");

/// How a proxy reaches its agent's xDS port, which speaks mutual TLS: the
/// address, and the client certificate the proxy presents (its SPIFFE ID
/// decides what it may receive). Envoy does not verify the agent's serving
/// certificate, as in `deploy/`.
#[derive(Clone)]
pub struct XdsClient {
    pub addr: SocketAddr,
    pub cert_pem: String,
    pub key_pem: String,
}

impl XdsClient {
    /// As cluster `id`'s ingress gateway ([`GATEWAY_SERVICE_ACCOUNT`]).
    pub fn gateway(id: &ClusterIdentity, addr: SocketAddr) -> XdsClient {
        Self::workload(id, addr, GATEWAY_SERVICE_ACCOUNT.0, GATEWAY_SERVICE_ACCOUNT.1)
    }

    /// As workload `ns/sa` of cluster `id` (a certificate from its root).
    pub fn workload(id: &ClusterIdentity, addr: SocketAddr, ns: &str, sa: &str) -> XdsClient {
        let (cert_pem, key_pem) = id.workload_cert(ns, sa);
        XdsClient { addr, cert_pem, key_pem }
    }
}

#[derive(Clone)]
pub struct GatewayOptions {
    pub cluster: SimCluster,
    pub upstream: SocketAddr,
    pub source: EdgeSource,
    pub tls: Option<ServerTls>,
    /// The API proxy route (needs [`EdgeSource::Ads`]).
    pub api: Option<ApiRoute>,
}

/// The API proxy: a virtual host of its own (`api.cluster-<n>.example`) to
/// a static cluster `kube_apiserver`, guarded by the `multicloud-api`
/// filter (ECDS over ADS) and with the proxy's own credential attached by
/// Envoy's credential injector (SDS generic secret over ADS).
#[derive(Clone)]
pub struct ApiRoute {
    /// The API host name (virtual host domains, and the SNI of `edge_tls`'s API filter chain).
    pub host: String,
    /// The (recorded) API server, plain HTTP in the test bed; production
    /// reaches the API server over TLS.
    pub apiserver: SocketAddr,
    /// Certificate and key for `host` on `edge_tls` (a filter chain matched by SNI).
    pub tls: Option<(String, String)>,
    /// The API server speaks TLS with a certificate from this CA (PEM) for
    /// its IP address (a real kube-apiserver); `None`: plain HTTP.
    pub upstream_ca: Option<String>,
}

/// The SDS secret holding the proxy's credential.
pub use multicloud_core::naming::API_PROXY_CREDENTIAL_SECRET as API_CREDENTIAL_SECRET;
/// The API guard's ECDS resource name.
pub use multicloud_proto::edge_filter::API_FILTER_NAME;

fn api_http_filters_yaml() -> String {
    format!(
        r#"          - name: {API_FILTER_NAME}
            disabled: true
            config_discovery:
              config_source: {{resource_api_version: V3, ads: {{}}}}
              type_urls: ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
          - name: envoy.filters.http.credential_injector
            disabled: true
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
              overwrite: true
              credential:
                name: envoy.http.injected_credentials.generic
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
                  credential: {{name: {API_CREDENTIAL_SECRET}, sds_config: {{ads: {{}}, resource_api_version: V3}}}}
                  header: Authorization
                  header_value_prefix: "Bearer "
"#
    )
}

fn api_vhost_yaml(domains: &str) -> String {
    format!(
        r#"            - name: api
              domains: {domains}
              routes:
              - match: {{prefix: /}}
                route: {{cluster: kube_apiserver, timeout: 0s}}
                typed_per_filter_config:
                  {API_FILTER_NAME}: {{"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {{}}}}
                  envoy.filters.http.credential_injector: {{"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {{}}}}
"#
    )
}

fn hcm_yaml(vhosts: &str, filters: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
{vhosts}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

/// One HTTP listener `name` on `ip` (any port), as YAML for
/// `static_resources.listeners`: its one virtual host (`*`) has `routes`,
/// its chain `filters` then the router (both YAML list items, indented for
/// them). For Envoys whose filters or routes are `deploy/`'s own JSON
/// ([`crate::manifests`]), which a typed bootstrap cannot take.
pub fn http_listener_yaml(name: &str, ip: std::net::Ipv4Addr, routes: &str, filters: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: {ip}, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

/// A filter chain's `transport_socket` presenting `cert`/`key` (inline),
/// indented for a `filter_chains` item.
pub(crate) fn server_tls_yaml(cert: &str, key: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{inline_string: {cert}}}
              private_key: {{inline_string: {key}}}
"#,
        cert = yaml_str(cert),
        key = yaml_str(key),
    )
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("json")
}

impl Gateway {
    pub fn spec(cluster: SimCluster, upstream: SocketAddr, initial_config_json: &str) -> EnvoySpec {
        Self::spec_with(GatewayOptions { cluster, upstream, source: EdgeSource::Test(initial_config_json.into()), tls: None, api: None })
    }

    pub fn spec_with(o: GatewayOptions) -> EnvoySpec {
        let ip = o.cluster.ip(hosts::GATEWAY);
        let (typed, source, files) = match &o.source {
            EdgeSource::Ads { xds, delta } => {
                (dp::ads_bootstrap("gateway", xds, *delta), serde_json::json!({"resource_api_version": "V3", "ads": {}}), vec![])
            }
            EdgeSource::Test(json) => (
                Default::default(),
                file_source("{dir}/ecds/edge.pb", "{dir}/ecds"),
                vec![("ecds/edge.pb".to_string(), ecds_file(json, "1"))],
            ),
            EdgeSource::Agent(p) => (
                Default::default(),
                file_source(&p.display().to_string(), &p.parent().expect("ecds file has a directory").display().to_string()),
                vec![],
            ),
        };
        let filter = format!("          - {}\n", yaml_flow(&manifests::edge_http_filter(Some(source))));
        assert!(o.api.is_none() || matches!(o.source, EdgeSource::Ads { .. }), "the API route needs the agent's ADS");
        let metadata_route =
            manifests::metadata_route(serde_json::json!({"match": {"prefix": "/metadata/"}, "route": {"cluster": "local_upstream"}}));
        let gateway_vhost = format!(
            r#"            - name: gateway
              domains: ["*"]
              routes:
              - {metadata_route}
              - match: {{prefix: /}}
                route: {{cluster: local_upstream}}
"#,
            metadata_route = yaml_flow(&metadata_route),
        );
        let mut filters = filter;
        let mut vhosts = String::new();
        let mut api_cluster = String::new();
        if let Some(api) = &o.api {
            filters.push_str(&api_http_filters_yaml());
            vhosts.push_str(&api_vhost_yaml(&format!("[{h:?}, \"{h}:*\"]", h = api.host)));
            api_cluster = format!(
                "  - name: kube_apiserver\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: kube_apiserver\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                api.apiserver.ip(),
                api.apiserver.port()
            );
            if let Some(ca) = &api.upstream_ca {
                api_cluster.push_str(&format!(
                    r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context:
            trusted_ca: {{inline_string: {ca}}}
            match_typed_subject_alt_names: [{{san_type: IP_ADDRESS, matcher: {{exact: "{ip}"}}}}]
"#,
                    ca = yaml_str(ca),
                    ip = api.apiserver.ip()
                ));
            }
        }
        vhosts.push_str(&gateway_vhost);
        let hcm = hcm_yaml(&vhosts, &filters);
        let mut listeners = format!(
            "  - name: edge
    address: {{socket_address: {{address: {ip}, port_value: 0}}}}
    filter_chains:
    - filters:
{hcm}"
        );
        if let Some(tls) = &o.tls {
            // The API host by SNI: a filter chain whose only virtual host is the API route.
            let api_chain = match o.api.as_ref().and_then(|a| a.tls.as_ref().map(|t| (a, t))) {
                Some((a, (cert, key))) => format!(
                    "    - filter_chain_match: {{server_names: [{host:?}]}}\n{tls}      filters:\n{hcm}",
                    host = a.host,
                    tls = server_tls_yaml(cert, key),
                    hcm = hcm_yaml(&api_vhost_yaml("[\"*\"]"), &filters),
                ),
                None => String::new(),
            };
            listeners.push_str(&format!(
                r#"{header}{api_chain}    - {tls}      filters:
{hcm}"#,
                header = tls_inspector_listener("edge_tls", ip, tls.port),
                tls = server_tls_yaml(&tls.cert_pem, &tls.key_pem).trim_start(),
            ));
        }
        let bootstrap = format!(
            r#"static_resources:
  listeners:
{listeners}  clusters:
{api_cluster}  - name: local_upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: local_upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {uip}, port_value: {uport}}}}}}}
"#,
            uip = o.upstream.ip(),
            uport = o.upstream.port(),
        );
        EnvoySpec {
            name: format!("gateway-{}", o.cluster.0),
            cluster: o.cluster,
            host: hosts::GATEWAY,
            typed,
            bootstrap,
            files,
            callgrind: None,
        }
    }

    pub fn start(cluster: SimCluster, initial_config_json: &str) -> Gateway {
        let upstream = RecordingUpstream::start(cluster.ip(hosts::UPSTREAM), true);
        let envoy = Envoy::start(Self::spec(cluster, upstream.addr(), initial_config_json));
        Gateway { cluster, envoy, upstream }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.envoy.listener("edge"), path)
    }

    fn ecds_stat(&self, which: &str) -> u64 {
        self.envoy.stat(&format!("extension_config_discovery.http_filter.{FILTER_NAME}.{which}")).unwrap_or(0)
    }

    /// Replaces the filter configuration (atomically, as a kubelet-projected
    /// file or an xDS push would) and waits until Envoy applied or rejected it.
    pub fn push_config(&self, config_json: &str) -> Push {
        // config_reload counts every attempt; update_success/update_rejected
        // tell the outcome.
        let (ok, rejected) = (self.ecds_stat("update_success"), self.ecds_stat("update_rejected"));
        let dir = self.envoy.dir().join("ecds");
        let tmp = dir.join(".edge.pb.tmp");
        let version = (ok + rejected + 2).to_string();
        std::fs::write(&tmp, ecds_file(config_json, &version)).expect("write ecds");
        std::fs::rename(&tmp, dir.join("edge.pb")).expect("rename ecds");
        wait_until("the gateway to apply or reject the pushed configuration", Duration::from_secs(30), || {
            let (o, r) = (self.ecds_stat("update_success"), self.ecds_stat("update_rejected"));
            if o > ok {
                Ok(Push::Applied)
            } else if r > rejected {
                Ok(Push::Rejected)
            } else {
                Err(format!("update_success {o}, update_rejected {r}"))
            }
        })
    }

    /// A filter counter (Envoy prefixes Wasm metrics with `wasmcustom.`).
    pub fn counter(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("wasmcustom.multicloud_edge.{name}")).unwrap_or(0)
    }
}

/// The head of a bootstrap listener (YAML, in a `listeners:` list) named
/// `name` on `ip:port` with the TLS inspector, up to its `filter_chains:`
/// line; the caller appends the chains.
pub fn tls_inspector_listener(name: &str, ip: impl std::fmt::Display, port: u16) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: {ip}, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:
"#
    )
}
