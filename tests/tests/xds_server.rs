//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The agent's ADS server against real Envoy 1.40, state of the world
//! (`GRPC`, on 127.0.51.x) and delta (`DELTA_GRPC`, on 127.0.52.x): CDS +
//! EDS + SDS delivered and ACKed, an endpoint added, a cluster Envoy rejects
//! (NACK recorded, previous cluster kept), and a server restart on the same
//! address that Envoy re-syncs with, its configuration unchanged.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_agent::xds::{self, Snapshot, XdsServer};
use multicloud_e2e::envoy::{Envoy, EnvoySpec};
use multicloud_e2e::fixtures::{dp, ClusterIdentity, EdgeCa};
use multicloud_e2e::gateway::XdsClient;
use multicloud_e2e::{hosts, wait_until, SimCluster};
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
use multicloud_proto::envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::{
    address, config_source, data_source, socket_address, transport_socket, Address, AggregatedConfigSource, ApiVersion, ConfigSource,
    DataSource, SocketAddress, TransportSocket,
};
use multicloud_proto::envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, secret, CertificateValidationContext, CommonTlsContext, SdsSecretConfig, Secret, UpstreamTlsContext,
};
use multicloud_proto::envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use multicloud_proto::prost::Message;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
const GROUP: &str = "sidecar";
const CLUSTER_NAME: &str = "remote-echo";
const SECRET_NAME: &str = "peer-trust-bundle";

fn any(type_url: &str, m: &impl Message) -> Any {
    Any { type_url: type_url.into(), value: m.encode_to_vec() }
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    })
}

/// An EDS cluster whose upstream TLS trusts the SDS secret.
fn eds_cluster(connect_timeout_secs: i64) -> Any {
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(SdsSecretConfig {
                name: SECRET_NAME.into(),
                sds_config: ads(),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = Cluster {
        name: CLUSTER_NAME.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: ads(), service_name: String::new() }),
        connect_timeout: Some(PbDuration { seconds: connect_timeout_secs, nanos: 0 }),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(multicloud_proto::type_url::UPSTREAM_TLS, &tls))),
        }),
        ..Default::default()
    };
    any(xds::CLUSTER, &c)
}

fn endpoints(addrs: &[SocketAddr]) -> Any {
    let lb_endpoints = addrs
        .iter()
        .map(|a| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: a.ip().to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(a.port().into())),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let cla = ClusterLoadAssignment {
        cluster_name: CLUSTER_NAME.into(),
        endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
        ..Default::default()
    };
    any(xds::ENDPOINT, &cla)
}

fn trust_bundle(pem: &str) -> Any {
    let s = Secret {
        name: SECRET_NAME.into(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource { specifier: Some(data_source::Specifier::InlineString(pem.into())), ..Default::default() }),
            ..Default::default()
        })),
    };
    any(xds::SECRET, &s)
}

fn snapshot(ca_pem: &str, connect_timeout_secs: i64, eps: &[SocketAddr]) -> Snapshot {
    let mut s = Snapshot::default();
    s.insert(xds::SECRET, SECRET_NAME, trust_bundle(ca_pem));
    s.insert(xds::CLUSTER, CLUSTER_NAME, eds_cluster(connect_timeout_secs));
    s.insert(xds::ENDPOINT, CLUSTER_NAME, endpoints(eps));
    s
}

/// A server on its own runtime: dropping the runtime kills the server and
/// every stream, as a crashed agent would.
struct Running {
    rt: tokio::runtime::Runtime,
    server: XdsServer,
}

/// The cluster the in-process server and its Envoy belong to (the server
/// trusts its root; Envoy presents a workload certificate from it).
static CLUSTER_ID: std::sync::LazyLock<ClusterIdentity> = std::sync::LazyLock::new(|| ClusterIdentity::generate("xds-server"));

fn serve(addr: SocketAddr, snap: &Snapshot) -> (Running, SocketAddr) {
    let server = XdsServer::new(Arc::new(|_| GROUP.to_string()));
    server.set(GROUP, snap.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    // A listener that was just closed may take a moment to release its port.
    let listener =
        wait_until(&format!("bind xDS address {addr}"), TIMEOUT, || std::net::TcpListener::bind(addr).map_err(|e| e.to_string()));
    listener.set_nonblocking(true).expect("nonblocking");
    let bound = listener.local_addr().expect("local addr");
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener).expect("tokio listener")
    };
    rt.spawn(server.clone().serve_tls(listener, CLUSTER_ID.xds_tls()));
    (Running { rt, server }, bound)
}

/// The static cluster `xds` to the server (typed), and ADS over it (YAML).
fn bootstrap(api_type: &str, xds: SocketAddr) -> (Bootstrap, String) {
    let cluster = dp::xds_cluster("xds", &XdsClient::workload(&CLUSTER_ID, xds, "abc", "foo"));
    let typed =
        Bootstrap { static_resources: Some(StaticResources { clusters: vec![cluster], ..Default::default() }), ..Default::default() };
    let yaml = format!(
        r#"
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
"#
    );
    (typed, yaml)
}

fn find<'a>(dump: &'a Value, type_suffix: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(type_suffix)))
}

/// The dynamic cluster as Envoy has it (version, connect_timeout, last_updated).
fn active_cluster(dump: &Value) -> Option<Value> {
    let clusters = find(dump, "ClustersConfigDump")?["dynamic_active_clusters"].as_array()?;
    clusters.iter().find(|c| c["cluster"]["name"] == CLUSTER_NAME).cloned()
}

fn endpoint_ports(dump: &Value) -> Vec<u64> {
    let Some(eds) = find(dump, "EndpointsConfigDump") else { return vec![] };
    let mut ports: Vec<u64> = eds["dynamic_endpoint_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["endpoint_config"]["cluster_name"] == CLUSTER_NAME)
        .flat_map(|e| e["endpoint_config"]["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|l| l["lb_endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["endpoint"]["address"]["socket_address"]["port_value"].as_u64())
        .collect();
    ports.sort();
    ports
}

fn has_secret(dump: &Value) -> bool {
    find(dump, "SecretsConfigDump")
        .and_then(|s| s["dynamic_active_secrets"].as_array())
        .is_some_and(|a| a.iter().any(|s| s["name"] == SECRET_NAME))
}

/// Every type of the snapshot ACKed by the proxy at the version last sent.
fn all_acked(server: &XdsServer, node: &str) -> Result<(), String> {
    let proxies = server.proxies();
    let p = proxies.iter().find(|p| p.node_id == node).ok_or_else(|| format!("{node} not connected: {proxies:?}"))?;
    for t in [xds::SECRET, xds::CLUSTER, xds::ENDPOINT] {
        let s = p.types.get(t).ok_or_else(|| format!("{t} not requested: {p:?}"))?;
        if s.acked_version.is_none() || s.acked_version != s.sent_version {
            return Err(format!("{t} not ACKed: {s:?}"));
        }
    }
    Ok(())
}

fn scenario(api_type: &str, sim: SimCluster) {
    let ca = EdgeCa::generate(&format!("xds-{}", sim.0)).pem();
    let ep = |host: u8, port: u16| SocketAddr::from((sim.ip(host), port));
    let ep1 = ep(hosts::UPSTREAM, 8001);
    let ep2 = ep(hosts::UPSTREAM, 8002);
    let good = snapshot(&ca, 1, &[ep1]);
    let (running, addr) = serve(SocketAddr::from((sim.ip(hosts::AGENT), 0)), &good);
    let name = format!("xds-{}", api_type.to_lowercase().replace('_', "-"));
    let (typed, yaml) = bootstrap(api_type, addr);
    let envoy = Envoy::start(EnvoySpec { bootstrap: yaml, ..EnvoySpec::typed(name.clone(), sim, hosts::SIDECAR, typed) });

    // 1. Cluster, endpoint and secret arrive and are ACKed.
    wait_until("cluster, endpoint and secret in config_dump", TIMEOUT, || {
        let d = envoy.config_dump();
        match (active_cluster(&d), endpoint_ports(&d), has_secret(&d)) {
            (Some(_), p, true) if p == [8001] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_until("ACKs in proxies()", TIMEOUT, || all_acked(&running.server, &name));
    let p = &running.server.proxies()[0];
    assert_eq!(p.group, GROUP);
    assert_eq!(format!("{:?}", p.protocol), if api_type == "GRPC" { "Sotw" } else { "Delta" });

    // 2. A second endpoint.
    let two = snapshot(&ca, 1, &[ep1, ep2]);
    running.server.set(GROUP, two.clone());
    wait_until("second endpoint in config_dump", TIMEOUT, || {
        let p = endpoint_ports(&envoy.config_dump());
        if p == [8001, 8002] {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });
    wait_until("endpoint update ACKed", TIMEOUT, || all_acked(&running.server, &name));
    let before = active_cluster(&envoy.config_dump()).expect("cluster");

    // 3. A cluster Envoy rejects (a negative connect_timeout): NACK
    // recorded with Envoy's reason; Envoy keeps the previous cluster.
    running.server.set(GROUP, snapshot(&ca, -1, &[ep1, ep2]));
    let nack = wait_until("NACK in proxies()", TIMEOUT, || {
        let proxies = running.server.proxies();
        let t = proxies.first().and_then(|p| p.types.get(xds::CLUSTER)).cloned();
        t.and_then(|t| t.last_nack).ok_or_else(|| format!("{proxies:?}"))
    });
    // Envoy 1.40 says "Invalid duration: Expected positive duration ... seconds: -1".
    assert!(nack.message.contains("positive duration"), "{nack:?}");
    assert!(running.server.nack_count() >= 1);
    let after = active_cluster(&envoy.config_dump()).expect("cluster kept");
    assert_eq!(after["version_info"], before["version_info"]);
    assert_eq!(after["cluster"]["connect_timeout"], "1s");

    // 4. The good snapshot again, then the server dies and a new one with the
    // same snapshot starts on the same address: Envoy reconnects, re-syncs,
    // and its configuration is unchanged.
    running.server.set(GROUP, two.clone());
    wait_until("good snapshot ACKed again", TIMEOUT, || all_acked(&running.server, &name));
    let before = envoy.config_dump();
    // Waits until every task (listener and streams included) is dropped.
    running.rt.shutdown_timeout(Duration::from_secs(5));
    let (running, _) = serve(addr, &two);
    wait_until("Envoy reconnected and ACKed the new server", TIMEOUT, || all_acked(&running.server, &name));
    let after = envoy.config_dump();
    assert_eq!(active_cluster(&after), active_cluster(&before), "cluster unchanged, not re-applied");
    assert_eq!(endpoint_ports(&after), [8001, 8002]);
    assert!(has_secret(&after));
    assert_eq!(running.server.nack_count(), 0);
    drop(envoy);
    running.rt.shutdown_background();
}

#[test]
fn envoy_is_served_over_state_of_the_world_ads() {
    scenario("GRPC", SimCluster(51));
}

#[test]
fn envoy_is_served_over_delta_ads() {
    scenario("DELTA_GRPC", SimCluster(52));
}
