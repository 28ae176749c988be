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
use multicloud_e2e::fixtures::{dp, edge_config, sample_private, ClusterIdentity, EdgeCa};
use multicloud_e2e::upstream::RecordingUpstream;
use multicloud_e2e::{hosts, paths, wait_until, SimCluster};
use multicloud_proto::edge_filter;
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
use multicloud_proto::envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
};
use multicloud_proto::envoy_types::pb::google::protobuf::BoolValue;
use multicloud_proto::parts::tls_socket;
use multicloud_proto::prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;

const MESH: SimCluster = SimCluster(91);
const UPSTREAMS: SimCluster = SimCluster(92);
const ROOT_ID: &str = "multicloud-mesh";
const FOO: &str = "foo.abc.svc.cluster.local";
const BAR: &str = "bar.abc.svc.cluster.local";

fn sni(peer: &ClusterIdentity) -> String {
    multicloud_core::naming::peer_sni(&peer.uuid)
}

/// One filter chain: exact SNI, client certificate required, validated
/// against `peer`'s root only; the filter (ECDS) then the router.
fn filter_chain(peer: &ClusterIdentity, server: &(String, String)) -> FilterChain {
    let tls = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![dp::tls_certificate(&server.0, &server.1)],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: dp::inline(&peer.root_pem()),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let filter = dp::ecds_filter(ROOT_ID, dp::file_source("ecds/mesh.pb", "ecds"));
    let hcm = dp::hcm("mesh", vec![dp::virtual_host("local", &["*"], vec![dp::route_to("local_services")])], vec![filter]);
    FilterChain {
        filter_chain_match: Some(FilterChainMatch { server_names: vec![sni(peer)], ..Default::default() }),
        transport_socket: Some(tls_socket(tls)),
        filters: vec![dp::hcm_filter(hcm)],
        ..Default::default()
    }
}

fn mesh_gateway(chains: Vec<FilterChain>, upstream: SocketAddr, config_json: &str) -> Envoy {
    let ecds = multicloud_proto::discovery_response(
        edge_filter::EXTENSION_CONFIG_TYPE_URL,
        "1",
        vec![edge_filter::resource_with_root_id(&paths::filter_wasm().display().to_string().as_str().into(), config_json, ROOT_ID)],
    )
    .encode_to_vec();
    let mesh = Listener {
        listener_filters: vec![dp::tls_inspector()],
        ..dp::listener("mesh", SocketAddr::from((MESH.ip(hosts::GATEWAY), 0)), chains)
    };
    let typed = Bootstrap {
        static_resources: Some(StaticResources {
            listeners: vec![mesh],
            clusters: vec![dp::static_cluster("local_services", upstream)],
            ..Default::default()
        }),
        ..Default::default()
    };
    Envoy::start(EnvoySpec {
        files: vec![("ecds/mesh.pb".into(), ecds)],
        ..EnvoySpec::typed("mesh-gateway".into(), MESH, hosts::GATEWAY, typed)
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
    let chains = vec![filter_chain(&a, &server_ca.server_cert_dns(&sni(&a))), filter_chain(&c, &server_ca.server_cert_dns(&sni(&c)))];
    let envoy = mesh_gateway(chains, upstream.addr(), &serde_json::to_string(&config).unwrap());
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
