//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The mesh resources (`multicloud_proto::mesh`) load in a real Envoy 1.40.
//!
//! No xDS server: the very resources the agent pushes over ADS are written
//! as binary `DiscoveryResponse` files, one per EDS/SDS resource and one for
//! CDS, and the builders are told to name file config sources instead of
//! ADS (`Sources` with `ConfigSourceKind::FilesIn`). Everything else in the
//! resources is byte for byte what the agent serves. A listener in the
//! bootstrap refers to the trust bundle, as a workload's inbound side does,
//! so that SDS loads it too.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::{ExportedService, IngressGateway, ServicePort};
use multicloud_e2e::envoy::{Envoy, EnvoySpec};
use multicloud_e2e::fixtures::{dp, ClusterIdentity};
use multicloud_e2e::{hosts, wait_until, SimCluster};
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use multicloud_proto::envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
use multicloud_proto::envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, DownstreamTlsContext,
};
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use multicloud_proto::envoy_types::pb::google::protobuf::BoolValue;
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::mesh::{self, ClientIdentity, ConfigSourceKind, PeerView, Sources};
use multicloud_proto::parts::{sds, tls_socket};
use multicloud_proto::prost::Message as _;
use multicloud_proto::source::config_source;
use multicloud_proto::type_url;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const HOST: &str = "foo.abc.svc.cluster.local";

/// The workload certificate Istio's agent would serve as `default`.
fn workload_cert(local: &ClusterIdentity) -> Secret {
    let (chain, key) = local.workload_cert("abc", "client");
    multicloud_proto::secrets::tls_certificate_secret("default", &chain, &key)
}

fn write_response(dir: &Path, file: &str, type_url: &str, resources: Vec<Any>) {
    let bytes = multicloud_proto::discovery_response(type_url, "1", resources).encode_to_vec();
    std::fs::write(dir.join(file), bytes).unwrap();
}

fn resource_name(any: &Any, type_url: &str) -> String {
    use multicloud_proto::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    match type_url {
        type_url::SECRET => Secret::decode(any.value.as_slice()).unwrap().name,
        type_url::ENDPOINT => ClusterLoadAssignment::decode(any.value.as_slice()).unwrap().cluster_name,
        _ => unreachable!(),
    }
}

/// The named entry of a config_dump list, by a JSON pointer to its name.
fn find<'a>(list: &'a Value, name_at: &str, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|e| e.pointer(name_at).and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in {list:#}"))
}

fn section<'a>(dump: &'a Value, suffix: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no {suffix} in config_dump"))
}

#[test]
fn mesh_resources_load_in_envoy_without_rejection() {
    let local = ClusterIdentity::generate("a");
    let (b, c) = (ClusterIdentity::generate("b"), ClusterIdentity::generate("c"));
    let cluster = SimCluster(53);
    let services = vec![ExportedService {
        hostname: HOST.into(),
        ports: vec![
            ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) },
            ServicePort { name: "grpc".into(), port: 9090, protocol: Some("GRPC".into()) },
        ],
        ready_endpoints: 5,
    }];
    let gw_b = vec![
        IngressGateway { address: cluster.ip(10).to_string(), port: 15443 },
        IngressGateway { address: cluster.ip(11).to_string(), port: 15443 },
    ];
    let gw_c = vec![IngressGateway { address: cluster.ip(20).to_string(), port: 15443 }];
    let (root_b, root_c) = (b.root_pem(), c.root_pem());
    let peers = [
        PeerView { name: "b", cluster_uuid: &b.uuid, root_ca_pem: &root_b, network: "network-b", gateways: &gw_b, services: &services },
        PeerView { name: "c", cluster_uuid: &c.uuid, root_ca_pem: &root_c, network: "network-c", gateways: &gw_c, services: &services },
    ];

    let xds = tempfile::Builder::new().prefix("multicloud-xds-resources-").tempdir().unwrap();
    let dir = xds.path().display().to_string();
    let files = ConfigSourceKind::FilesIn(dir.clone());
    let sources = Sources { eds: files.clone(), trust: files.clone(), cert: files };
    let client = ClientIdentity { cert_secret: "default", sds_cluster: "ads" };
    let all = mesh::mesh_resources(&local.root_pem(), &peers, &client, &sources).unwrap();

    write_response(xds.path(), &mesh::resource_file_name("cds"), type_url::CLUSTER, all.clusters.clone());
    let mut secrets = all.secrets.clone();
    secrets.push(pack_any(workload_cert(&local)));
    for (type_url, list) in [(type_url::SECRET, &secrets), (type_url::ENDPOINT, &all.endpoints)] {
        for any in list {
            write_response(xds.path(), &mesh::resource_file_name(&resource_name(any, type_url)), type_url, vec![any.clone()]);
        }
    }

    // Envoy without an xDS server: CDS, and the inbound chain's SDS, from
    // the same files (`ConfigSourceKind::FilesIn`) the clusters refer to.
    let from_files = |name: &str| config_source(&ConfigSourceKind::FilesIn(dir.clone()), name);
    let inbound_tls = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default", from_files("default"))],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                mesh::TRUST_BUNDLE_SECRET,
                from_files(mesh::TRUST_BUNDLE_SECRET),
            ))),
            ..Default::default()
        }),
        ..Default::default()
    };
    let first_cluster = mesh::remote_cluster_name("b", HOST, 80);
    let to_first = Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: "inbound".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(first_cluster.clone())),
            ..Default::default()
        }))),
    };
    let inbound = dp::listener(
        "inbound",
        std::net::SocketAddr::from((cluster.ip(hosts::SIDECAR), 0)),
        vec![FilterChain { transport_socket: Some(tls_socket(inbound_tls)), filters: vec![to_first], ..Default::default() }],
    );
    let typed = Bootstrap {
        dynamic_resources: Some(DynamicResources { cds_config: Some(from_files("cds")), ..Default::default() }),
        static_resources: Some(StaticResources { listeners: vec![inbound], ..Default::default() }),
        ..Default::default()
    };
    let envoy = Envoy::start(EnvoySpec::typed("xds-resources".into(), cluster, hosts::SIDECAR, typed));

    let names: Vec<(String, &str, &str, u16)> = peers
        .iter()
        .flat_map(|p| [80u16, 9090].map(|port| (mesh::remote_cluster_name(p.name, HOST, port), p.name, p.cluster_uuid, port)))
        .collect();
    assert_eq!(names.len(), 4);

    // Every cluster active (so warmed: its EDS and both SDS secrets arrived).
    let dump = wait_until("the remote clusters to be active", Duration::from_secs(20), || {
        let dump = envoy.config_dump();
        let active = section(&dump, "ClustersConfigDump")["dynamic_active_clusters"].as_array().cloned().unwrap_or_default();
        let missing: Vec<&String> =
            names.iter().map(|n| &n.0).filter(|n| !active.iter().any(|c| c["cluster"]["name"].as_str() == Some(n.as_str()))).collect();
        if missing.is_empty() {
            Ok(dump)
        } else {
            Err(format!("missing {missing:?}; warming: {}", section(&dump, "ClustersConfigDump")["dynamic_warming_clusters"]))
        }
    });

    let clusters = &section(&dump, "ClustersConfigDump")["dynamic_active_clusters"];
    let endpoints = &section(&dump, "EndpointsConfigDump")["dynamic_endpoint_configs"];
    let secrets = &section(&dump, "SecretsConfigDump")["dynamic_active_secrets"];
    for (name, peer, uuid, port) in &names {
        let c = &find(clusters, "/cluster/name", name)["cluster"];
        assert_eq!(c["type"], "EDS", "{name}");
        assert_eq!(c["connect_timeout"], "2s");
        assert_eq!(c["metadata"]["filter_metadata"]["istio-multicloud"]["peer"], *peer);
        assert_eq!(c["outlier_detection"]["consecutive_gateway_failure"], 3);
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], mesh::sni(HOST, *port), "{name}");
        assert_eq!(tls["common_tls_context"]["alpn_protocols"], serde_json::json!(["istio-peer-exchange", "istio"]));
        assert_eq!(tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"], "default");
        assert_eq!(tls["common_tls_context"]["validation_context_sds_secret_config"]["name"], mesh::peer_root_secret_name(uuid));

        let e = &find(endpoints, "/endpoint_config/cluster_name", name)["endpoint_config"]["endpoints"][0];
        assert_eq!(e["locality"]["region"], "multicloud");
        assert_eq!(e["locality"]["zone"], *peer);
        let got: Vec<(String, u64, u64)> = e["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let sa = &l["endpoint"]["address"]["socket_address"];
                (
                    sa["address"].as_str().unwrap().to_string(),
                    sa["port_value"].as_u64().unwrap(),
                    l["load_balancing_weight"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, u64, u64)> = match *peer {
            "b" => vec![(cluster.ip(10).to_string(), 15443, 3), (cluster.ip(11).to_string(), 15443, 2)],
            _ => vec![(cluster.ip(20).to_string(), 15443, 5)],
        };
        assert_eq!(got, want, "{name}: endpoints at the peer's gateways, 5 ready endpoints spread over them");
        assert_eq!(e["lb_endpoints"][0]["metadata"]["filter_metadata"]["istio"]["network"], format!("network-{peer}"));

        // The peer root: that peer's certificate only.
        let s = find(secrets, "/name", &mesh::peer_root_secret_name(uuid));
        let ca = s["secret"]["validation_context"]["trusted_ca"]["inline_string"].as_str().unwrap_or_else(|| panic!("{s:#}"));
        assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 1);
    }
    // The trust bundle (the inbound listener's): local root and both peers'.
    let s = find(secrets, "/name", mesh::TRUST_BUNDLE_SECRET);
    let ca = s["secret"]["validation_context"]["trusted_ca"]["inline_string"].as_str().unwrap_or_else(|| panic!("{s:#}"));
    assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 3);

    // Nothing was rejected, and every subscription took its update.
    let stats = envoy.admin_get("/stats").unwrap();
    let rejected: Vec<&str> = stats.lines().filter(|l| l.contains("update_rejected") && !l.ends_with(": 0")).collect();
    assert!(rejected.is_empty(), "rejected updates: {rejected:?}");
    let successes =
        |needle: &str| stats.lines().filter(|l| l.contains(needle) && l.contains("update_success") && !l.ends_with(": 0")).count();
    assert_eq!(envoy.stat("cluster_manager.cds.update_success"), Some(1));
    assert_eq!(successes("multicloud-"), 4 + 2 + 1, "EDS of 4 clusters, 2 peer roots, the trust bundle:\n{stats}");
    assert!(envoy.log().lines().all(|l| !l.contains("rejected")), "{}", envoy.log());
}
