//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The agent's per-type xDS services against real Envoy 1.40 (127.0.58.x),
//! configured the way `deploy/base/edge-filter.yaml` configures an
//! istiod-run gateway, its patches read from that file at run time
//! (`multicloud_e2e::manifests`): no ADS to the agent at all; the edge
//! filter's entry is the EnvoyFilter's (`disabled: true`, its configuration
//! by ECDS from an `api_config_source`: `DELTA_GRPC`, so
//! `ExtensionConfigDiscoveryService/DeltaExtensionConfigs`), enabled on the
//! `/metadata/` route by the EnvoyFilter's route patch; a cluster's trust
//! comes by SDS from another source (`GRPC`, so
//! `SecretDiscoveryService/StreamSecrets`), both pointing at the agent's
//! xDS port (`multicloud-agent`: the test bed's typed cluster in place of
//! the EnvoyFilter's, which names an in-cluster Service and Istio's SDS).
//! The server is the agent's own `XdsServer`, in process.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_agent::xds::{self, Snapshot, XdsServer};
use multicloud_e2e::envoy::{Envoy, EnvoySpec};
use multicloud_e2e::fixtures::dp;
use multicloud_e2e::fixtures::{edge_config, sample_private, ClusterIdentity, EdgeCa};
use multicloud_e2e::gateway::{http_listener_yaml, XdsClient};
use multicloud_e2e::manifests::{self, yaml_flow};
use multicloud_e2e::{hosts, http, paths, wait_until, SimCluster};
use multicloud_proto::edge_filter;
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
use multicloud_proto::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use multicloud_proto::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, UpstreamTlsContext,
};
use multicloud_proto::envoy_types::util::pack_any;
use multicloud_proto::source::{config_source, ConfigSourceKind};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn ecds_and_sds_from_per_type_services_as_deploy_configures_them() {
    let sim = SimCluster(58);
    let local = ClusterIdentity::generate("a");
    let json = serde_json::to_string(&edge_config(&local, &[], sample_private(sim))).expect("json");
    let wasm = paths::filter_wasm().display().to_string();
    let ca = EdgeCa::generate("trust");
    let mut snap = Snapshot::default();
    snap.insert(xds::EXTENSION_CONFIG, edge_filter::FILTER_NAME, edge_filter::resource(&wasm.as_str().into(), &json));
    snap.insert(xds::SECRET, "peer-root", pack_any(multicloud_proto::secrets::validation_secret("peer-root", ca.pem())));
    let server = XdsServer::new(Arc::new(|_| "gateway".to_string()));
    server.set("gateway", snap);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind((sim.ip(hosts::AGENT), 0))).expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(server.clone().serve_tls(listener, local.xds_tls()));

    let ip = sim.ip(hosts::GATEWAY);
    // deploy/'s VirtualService: a direct response only a missing filter lets through.
    let metadata_route = manifests::metadata_route(
        serde_json::json!({"name": "multicloud-metadata", "match": {"prefix": "/metadata/"}, "direct_response": {"status": 503}}),
    );
    let routes = format!(
        "              - {}\n              - match: {{prefix: /}}\n                direct_response: {{status: 404}}\n",
        yaml_flow(&metadata_route)
    );
    let filters = format!("          - {}\n", yaml_flow(&manifests::edge_http_filter(None)));
    let bootstrap = format!(
        "node: {{id: router~per-type, cluster: gw}}\nstatic_resources:\n  listeners:\n{}",
        http_listener_yaml("edge", ip, &routes, &filters)
    );
    // A cluster whose trust (SDS `peer-root`) comes from the agent's per-type SDS service.
    let sds = config_source(&ConfigSourceKind::GrpcCluster(dp::AGENT_CLUSTER.into()), "peer-root");
    let peer_tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                multicloud_proto::parts::sds("peer-root", sds),
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let peer = Cluster {
        transport_socket: Some(multicloud_proto::parts::tls_socket(peer_tls)),
        ..dp::static_cluster("peer", std::net::SocketAddr::from((ip, 9)))
    };
    let agent = dp::xds_cluster(dp::AGENT_CLUSTER, &XdsClient::gateway(&local, addr));
    let typed =
        Bootstrap { static_resources: Some(StaticResources { clusters: vec![peer, agent], ..Default::default() }), ..Default::default() };
    let envoy = Envoy::start(EnvoySpec { bootstrap, ..EnvoySpec::typed("per-type-58".into(), sim, hosts::GATEWAY, typed) });

    // ECDS by DeltaExtensionConfigs: the filter serves this cluster's document.
    let url = format!("http://{}/metadata/public/public.json", envoy.listener("edge"));
    let doc = wait_until("the filter configured by ECDS from the per-type service", TIMEOUT, || {
        let r = http::try_request("GET", &url, &[])?;
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    });
    assert_eq!(doc["clusterUUID"], local.uuid.as_str());
    // SDS by StreamSecrets: the cluster's validation context is the served root.
    wait_until("the secret delivered by SDS from the per-type service", TIMEOUT, || {
        let dump = envoy.admin_get("/config_dump?resource=dynamic_active_secrets").map_err(|e| e.to_string())?;
        if dump.contains("peer-root") && dump.contains("BEGIN CERTIFICATE") {
            Ok(())
        } else {
            Err(dump.chars().take(300).collect())
        }
    });
    // Both streams ACKed, as the agent's /xds view reports them.
    wait_until("both types ACKed", TIMEOUT, || {
        let proxies = server.proxies();
        let acked = |t: &str| {
            proxies.iter().any(|p| p.types.get(t).is_some_and(|s| s.acked_version.is_some() && s.acked_version == s.sent_version))
        };
        if acked(xds::EXTENSION_CONFIG) && acked(xds::SECRET) {
            Ok(())
        } else {
            Err(serde_json::to_string(&proxies).unwrap_or_default())
        }
    });
    drop(envoy);
    drop(rt);
}
