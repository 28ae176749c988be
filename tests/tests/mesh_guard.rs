//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The `multicloud-mesh` filter role in a real Envoy 1.40 (V8): the
//! identity-enforcing mesh port, as the gateway builds it (one filter chain
//! per peer, selected by exact SNI, client certificate required and
//! validated against that peer's root CA only), each chain's HTTP
//! connection manager running the filter (ECDS, root id `multicloud-mesh`)
//! and then the router to a recording upstream.
//!
//! Loopback only: Envoy on 127.0.91.x, the upstream on 127.0.92.x.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::meshguard::{MeshPeer, MeshSettings};
use multicloud_e2e::envoy::{Envoy, EnvoySpec};
use multicloud_e2e::fixtures::{edge_config, sample_private, ClusterIdentity, EdgeCa};
use multicloud_e2e::upstream::RecordingUpstream;
use multicloud_e2e::{hosts, paths, wait_until, SimCluster};
use multicloud_proto::edge_filter;
use multicloud_proto::prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;

const MESH: SimCluster = SimCluster(91);
const UPSTREAMS: SimCluster = SimCluster(92);
const ROOT_ID: &str = "multicloud-mesh";
const FOO: &str = "foo.abc.svc.cluster.local";
const BAR: &str = "bar.abc.svc.cluster.local";

fn sni(peer: &ClusterIdentity) -> String {
    format!("{}.peer.multicloud", peer.uuid)
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// One filter chain: exact SNI, client certificate required, validated
/// against `peer`'s root only; the filter (ECDS) then the router.
fn filter_chain(peer: &ClusterIdentity, server: &(String, String)) -> String {
    format!(
        r#"    - filter_chain_match: {{server_names: [{sni}]}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{inline_string: {cert}}}
              private_key: {{inline_string: {key}}}
            validation_context:
              trusted_ca: {{inline_string: {ca}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mesh
          route_config:
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: local_services}}
          http_filters:
          - name: {ROOT_ID}
            config_discovery:
              config_source:
                resource_api_version: V3
                path_config_source: {{path: "{{dir}}/ecds/mesh.pb", watched_directory: {{path: "{{dir}}/ecds"}}}}
              type_urls: ["{url}"]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#,
        sni = yaml_str(&sni(peer)),
        cert = yaml_str(&server.0),
        key = yaml_str(&server.1),
        ca = yaml_str(&peer.root_pem()),
        url = edge_filter::WASM_FILTER_TYPE_URL,
    )
}

fn mesh_gateway(chains: &str, upstream: SocketAddr, config_json: &str) -> Envoy {
    let ecds = multicloud_proto::discovery_response(
        edge_filter::EXTENSION_CONFIG_TYPE_URL,
        "1",
        vec![edge_filter::resource_with_root_id(&paths::filter_wasm().display().to_string().as_str().into(), config_json, ROOT_ID)],
    )
    .encode_to_vec();
    let bootstrap = format!(
        r#"static_resources:
  listeners:
  - name: mesh
    address: {{socket_address: {{address: {ip}, port_value: 0}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:
{chains}  clusters:
  - name: local_services
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: local_services
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {uip}, port_value: {uport}}}}}}}
"#,
        ip = MESH.ip(hosts::GATEWAY),
        uip = upstream.ip(),
        uport = upstream.port(),
    );
    Envoy::start(EnvoySpec {
        name: "mesh-gateway".into(),
        cluster: MESH,
        host: hosts::GATEWAY,
        bootstrap,
        files: vec![("ecds/mesh.pb".into(), ecds)],
        ..Default::default()
    })
}

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn reason(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        v["reason"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request over mTLS with a chosen SNI and client certificate
/// (`multicloud_e2e::mtls`), the server checked against `server_ca`. `Err`
/// is a transport failure (for instance a refused handshake).
fn mtls_get(
    addr: SocketAddr,
    sni: &str,
    server_ca: &str,
    client: &(String, String),
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    match multicloud_e2e::mtls::get_from(addr, sni, Some(server_ca), Some(client), host, "/hello", headers) {
        multicloud_e2e::mtls::Outcome::Http(status, body) => Ok(Resp { status, body }),
        multicloud_e2e::mtls::Outcome::Refused(e) => Err(e),
    }
}

/// The sum of the stats whose names end with `suffix`.
fn stat_sum(envoy: &Envoy, suffix: &str) -> u64 {
    let body = envoy.admin_get(&format!("/stats?filter={suffix}$")).unwrap_or_default();
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("wasmcustom.multicloud_mesh.{name}")).unwrap_or(0)
}

#[test]
fn the_mesh_port_names_the_caller_and_refuses_what_is_not_exported() {
    let local = ClusterIdentity::generate("b");
    let (a, c, x) = (ClusterIdentity::generate("a"), ClusterIdentity::generate("c"), ClusterIdentity::generate("x"));
    let server_ca = EdgeCa::generate("b");
    let mut config = edge_config(&local, &[], sample_private(MESH));
    config.mesh = MeshSettings {
        peers: vec![
            MeshPeer { name: "cluster-a".into(), cluster_uuid: a.uuid.clone(), sni: sni(&a), services: vec![FOO.into()] },
            MeshPeer { name: "cluster-c".into(), cluster_uuid: c.uuid.clone(), sni: sni(&c), services: vec![BAR.into()] },
        ],
    };
    let upstream = RecordingUpstream::start(UPSTREAMS.ip(hosts::UPSTREAM), true);
    let chains = filter_chain(&a, &server_ca.server_cert_dns(&sni(&a))) + &filter_chain(&c, &server_ca.server_cert_dns(&sni(&c)));
    let envoy = mesh_gateway(&chains, upstream.addr(), &serde_json::to_string(&config).unwrap());
    // Ready: the filter configuration applied (it defines its counters
    // then) and the listener bound.
    wait_until("the mesh filter to be configured", Duration::from_secs(60), || {
        match envoy.stat(&format!("extension_config_discovery.http_filter.{ROOT_ID}.update_success")) {
            Some(n) if n > 0 && envoy.stat("wasmcustom.multicloud_mesh.peer.cluster-a.allowed").is_some() => Ok(()),
            other => Err(format!("update_success {other:?}")),
        }
    });
    let addr = envoy.listener("mesh");
    let ca = server_ca.pem();
    let a_client = a.workload_cert("app", "client");
    let c_client = c.workload_cert("web", "frontend");

    // Allowed: A's workload, A's SNI, a host exported to A. Forged caller
    // headers (any case) are replaced, not duplicated.
    let forged = [
        ("x-multicloud-caller-cluster", "evil"),
        ("X-Multicloud-Caller-Spiffe", "spiffe://evil/ns/x/sa/y"),
        ("X-MULTICLOUD-CALLER-CLUSTER-UUID", "00000000-0000-0000-0000-000000000000"),
        ("x-multicloud-caller-extra", "dropped"),
    ];
    let r = mtls_get(addr, &sni(&a), &ca, &a_client, FOO, &forged).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let reached = upstream.requests();
    assert_eq!(reached.len(), 1);
    let caller: Vec<(String, String)> = reached[0].headers.iter().filter(|(k, _)| k.starts_with("x-multicloud-caller")).cloned().collect();
    let want = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut caller_sorted = caller.clone();
    caller_sorted.sort();
    assert_eq!(
        caller_sorted,
        vec![
            want("x-multicloud-caller-cluster", "cluster-a"),
            want("x-multicloud-caller-cluster-uuid", &a.uuid),
            want("x-multicloud-caller-spiffe", "spiffe://cluster.local/ns/app/sa/client"),
        ],
        "exactly the three caller headers, with the filter's values"
    );
    assert_eq!(reached[0].header("host"), Some(FOO));

    // C's workload on C's chain: named as C.
    let r = mtls_get(addr, &sni(&c), &ca, &c_client, &format!("{BAR}:80"), &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let last = upstream.requests().pop().unwrap();
    assert_eq!(last.header("x-multicloud-caller-cluster"), Some("cluster-c"));
    assert_eq!(last.header("x-multicloud-caller-cluster-uuid"), Some(c.uuid.as_str()));
    assert_eq!(last.header("x-multicloud-caller-spiffe"), Some("spiffe://cluster.local/ns/web/sa/frontend"));

    // A host this cluster does not export to A (it does to C): refused
    // locally, the upstream never sees it.
    let before = upstream.count();
    let r = mtls_get(addr, &sni(&a), &ca, &a_client, BAR, &[]).unwrap();
    assert_eq!((r.status, r.reason()), (403, "ServiceNotExported".to_string()), "{}", r.body);
    // A certificate from A's CA without a URI SAN: no caller identity.
    let no_san = a.root.anonymous_client_cert("client.example");
    let r = mtls_get(addr, &sni(&a), &ca, &no_san, FOO, &[]).unwrap();
    assert_eq!((r.status, r.reason()), (403, "NoPeerIdentity".to_string()), "{}", r.body);
    assert_eq!(upstream.count(), before, "refused requests never reach the upstream");

    // A certificate from a third CA with A's SNI, and A's certificate on
    // C's chain: the handshake is refused, no HTTP at all.
    let verify_failures = stat_sum(&envoy, "ssl.fail_verify_error");
    for (who, client, name) in
        [("third CA on A's SNI", x.workload_cert("app", "client"), sni(&a)), ("A's cert on C's SNI", a_client.clone(), sni(&c))]
    {
        let r = mtls_get(addr, &name, &ca, &client, FOO, &[]);
        assert!(r.is_err(), "{who}: expected a refused handshake, got HTTP {:?}", r.map(|r| (r.status, r.body)));
    }
    wait_until("Envoy to count both failed client verifications", Duration::from_secs(10), || {
        let n = stat_sum(&envoy, "ssl.fail_verify_error");
        if n >= verify_failures + 2 {
            Ok(())
        } else {
            Err(format!("ssl.fail_verify_error {n}"))
        }
    });
    assert_eq!(upstream.count(), before);

    // Counters, per peer, in Envoy's /stats.
    assert_eq!(counter(&envoy, "peer.cluster-a.allowed"), 1);
    assert_eq!(counter(&envoy, "peer.cluster-a.refused.service_not_exported"), 1);
    assert_eq!(counter(&envoy, "peer.cluster-a.refused.no_peer_identity"), 1);
    assert_eq!(counter(&envoy, "peer.cluster-c.allowed"), 1);
    assert_eq!(counter(&envoy, "peer.cluster-c.refused.service_not_exported"), 0);
    assert_eq!(envoy.stat("wasmcustom.multicloud_mesh.refused.unknown_peer"), Some(0));
    // One log line per refusal, naming the reason.
    let log = envoy.log();
    assert!(log.contains("multicloud mesh refused ServiceNotExported"), "no refusal log line");
    assert!(log.contains("multicloud mesh refused NoPeerIdentity"), "no refusal log line");
}
