//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The agent's xDS end to end: real agents exchange metadata between two
//! simulated clusters; a real Envoy sidecar and the real gateway Envoy are
//! configured by the agent over ADS, state of the world and delta.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::{ExportedService, ServicePort};
use multicloud_e2e::envoy::Envoy;
use multicloud_e2e::mesh::{start_mesh, Cluster, MeshOptions};
use multicloud_e2e::{dump, http, sidecar, wait_until, SimCluster};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(40);

fn remote_cluster(peer: &Cluster, host: &str, port: u16) -> String {
    multicloud_proto::mesh::remote_cluster_name(&Cluster::object_name(peer.sim), host, port)
}

fn a_sidecar_and_gateway_are_configured_from_a_real_exchange(delta: bool, base: u8) {
    let mut cs = start_mesh(
        &[SimCluster(base), SimCluster(base + 1)],
        MeshOptions { ads: Some(delta), per_peer_clusters: true, ..Default::default() },
    );
    let sidecar = Envoy::start(sidecar::spec(cs[0].sim, &cs[0].xds_client("abc", "foo"), delta));
    let b_name = Cluster::object_name(cs[1].sim);
    cs[0].agent.wait_condition(&b_name, "Ready", "True", READY);
    cs[1].agent.wait_condition(&Cluster::object_name(cs[0].sim), "Ready", "True", READY);

    // The remote service, its endpoint at B's gateway, and the trust secrets.
    let foo_cluster = remote_cluster(&cs[1], "foo.abc.svc.cluster.local", 80);
    let gw_b = format!("{}:15443", cs[1].sim.ip(multicloud_e2e::hosts::GATEWAY));
    let d = wait_until("the sidecar to hold B's service", READY, || {
        let d = sidecar.config_dump();
        if dump::clusters(&d).contains(&foo_cluster) && !dump::endpoints(&d, &foo_cluster).is_empty() {
            Ok(d)
        } else {
            Err(format!("clusters {:?}", dump::clusters(&d)))
        }
    });
    assert_eq!(dump::endpoints(&d, &foo_cluster), vec![(gw_b.clone(), 1)]);
    let c = dump::cluster(&d, &foo_cluster).unwrap();
    let tls = c["transport_socket"]["typed_config"].to_string();
    assert!(tls.contains("outbound_.80_._.foo.abc.svc.cluster.local"), "Istio SNI: {tls}");
    let peer_root = multicloud_proto::mesh::peer_root_secret_name(&cs[1].id.uuid);
    let secrets = dump::secrets(&d);
    for s in [multicloud_proto::mesh::TRUST_BUNDLE_SECRET.to_string(), peer_root.clone(), "default".to_string()] {
        assert!(secrets.contains(&s), "secret {s} in {secrets:?}");
    }
    let bundle = dump::secret(&d, multicloud_proto::mesh::TRUST_BUNDLE_SECRET).unwrap().to_string();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "own root + B's root");
    let workload = dump::secret(&d, "default").unwrap().to_string();
    assert!(!workload.contains("PRIVATE KEY"), "config_dump must not print the workload key: {workload}");

    // The gateway's filter configuration arrived by ECDS and names B as a peer.
    let gd = cs[0].gateway.config_dump();
    let ecds = dump::ecds(&gd);
    let edge = ecds.iter().find(|(n, _)| n == "multicloud-edge").map(|(_, v)| v.to_string()).expect("edge filter by ECDS");
    assert!(edge.contains(&cs[1].id.uuid), "B's UUID in A's edge configuration");

    // The agent's admin view: both proxies connected, everything ACKed, no NACK.
    let view = cs[0].agent.xds_view();
    let proxies = view["proxies"].as_array().unwrap();
    for group in ["gateway", "sidecar"] {
        let p = proxies.iter().find(|p| p["group"] == group).unwrap_or_else(|| panic!("no {group} in {view}"));
        assert_eq!(p["protocol"], if delta { "delta" } else { "sotw" });
        for (t, st) in p["types"].as_object().unwrap() {
            assert!(st["acked_version"].is_string(), "{group} {t} not ACKed: {st}");
            assert!(st["last_nack"].is_null(), "{group} {t} NACKed: {st}");
        }
    }
    assert_eq!(view["nacks"], 0);

    // A change at the remote: B exports a new service. A's agent sees it at
    // its next refresh; A's sidecar must have it within 2 s of that.
    cs[1].services.push(ExportedService {
        hostname: "bar.abc.svc.cluster.local".into(),
        ports: vec![ServicePort { name: "grpc".into(), port: 9090, protocol: Some("GRPC".into()) }],
        ready_endpoints: 3,
    });
    cs[1].rewrite_standalone();
    let seen = wait_until("A's agent to see bar", READY, || {
        let s = cs[0].agent.status()["objects"][&b_name]["metadataCache"]["private"]["document"]["services"].to_string();
        if s.contains("bar.abc") {
            Ok(Instant::now())
        } else {
            Err(s)
        }
    });
    let bar = remote_cluster(&cs[1], "bar.abc.svc.cluster.local", 9090);
    wait_until("the sidecar to hold bar", Duration::from_secs(10), || {
        let d = sidecar.config_dump();
        if dump::clusters(&d).contains(&bar) && dump::endpoints(&d, &bar) == vec![(gw_b.clone(), 3)] {
            Ok(())
        } else {
            Err(format!("{:?}", dump::endpoints(&d, &bar)))
        }
    });
    let took = seen.elapsed();
    assert!(took < Duration::from_secs(2), "the sidecar had the new service {took:?} after the agent saw it");
    // B's filter serves the updated document.
    let b_private = cs[1].agent.status();
    assert!(b_private.is_object());
    let served = cs[0].agent.status()["objects"][&b_name]["metadataCache"]["private"]["document"].clone();
    assert!(served.to_string().contains("bar.abc"), "fetched through B's filter: {served}");
}

#[test]
fn a_sidecar_and_gateway_are_configured_over_state_of_the_world_ads() {
    a_sidecar_and_gateway_are_configured_from_a_real_exchange(false, 61);
}

#[test]
fn a_sidecar_and_gateway_are_configured_over_delta_ads() {
    a_sidecar_and_gateway_are_configured_from_a_real_exchange(true, 63);
}

/// A bounded load (at most 20 s) runs through the gateway A's agent
/// configures while the agent is killed and started again: no request
/// fails (before the kill, while the agent is down, after the re-sync),
/// and the gateway re-syncs when the agent is back.
#[test]
fn an_agent_restart_under_load_loses_no_request() {
    let mut cs =
        start_mesh(&[SimCluster(65), SimCluster(66)], MeshOptions { ads: Some(true), per_peer_clusters: true, ..Default::default() });
    cs[0].agent.wait_condition(&Cluster::object_name(cs[1].sim), "Ready", "True", READY);
    let url = cs[0].gateway_url("/metadata/public/public.json");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Requests answered so far: the steps below wait for the load to move on.
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = {
        let (url, stop, served) = (url.clone(), stop.clone(), served.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                match http::try_request("GET", &url, &[]) {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        served.store(ok, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    // Waits until the load has had `more` further requests answered.
    let answered = |what: &str, more: u32| {
        let from = served.load(std::sync::atomic::Ordering::SeqCst);
        wait_until(what, READY, || {
            let now = served.load(std::sync::atomic::Ordering::SeqCst);
            if now >= from + more {
                Ok(())
            } else {
                Err(format!("{} of {more} requests answered", now - from))
            }
        })
    };
    answered("the load to run before the restart", 50);
    cs[0].agent.kill();
    answered("the gateway to serve without its agent", 100);
    cs[0].agent.restart();
    wait_until("the gateway to re-sync with the restarted agent", READY, || {
        let v = cs[0].agent.xds_view();
        let gw = v["proxies"].as_array().and_then(|a| a.iter().find(|p| p["group"] == "gateway").cloned());
        match gw {
            Some(p) if p["types"].as_object().is_some_and(|t| !t.is_empty() && t.values().all(|s| s["acked_version"].is_string())) => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    });
    answered("the load to run on after the re-sync", 50);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), ok as usize + failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok > 100, "the load ran ({ok} requests)");
}

/// A remote whose documents do not validate (a private document with an
/// impossible gateway address; a public document with a broken root) gets a
/// status reason, and nothing of it reaches the sidecar. Then a NACK is
/// forced: the agent restarts with a workload certificate that pairs with
/// its key (the agent refuses a pair that does not, at start) but demands
/// OCSP stapling, which Envoy refuses without an OCSP response. The agent
/// reports the NACK and Envoy keeps the last good secret.
#[test]
fn invalid_remotes_never_reach_envoy_and_a_nack_is_reported() {
    use multicloud_e2e::envoy::EnvoySpec;
    use multicloud_e2e::fixtures::{dp, free_port, ClusterIdentity, EdgeCa};
    use multicloud_e2e::mesh::PeerRef;
    use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
    use multicloud_proto::envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use multicloud_proto::envoy_types::pb::envoy::config::route::v3::{route, route_match, DirectResponseAction, Route, RouteMatch};
    use multicloud_proto::parts::tls_socket;
    let mut cs = start_mesh(&[SimCluster(67)], MeshOptions { ads: Some(false), ..Default::default() });
    let sidecar = Envoy::start(sidecar::spec(cs[0].sim, &cs[0].xds_client("abc", "foo"), false));

    // One hostile TLS server (a real Envoy with direct responses) playing two remotes.
    let hostile = SimCluster(68);
    let (c, d) = (ClusterIdentity::generate("c"), ClusterIdentity::generate("d"));
    let ca = EdgeCa::generate("hostile");
    let (cert, key) = ca.server_cert(hostile.ip(1));
    let port = free_port(hostile.ip(1));
    let mut broken_d = d.public_metadata();
    broken_d.root_ca = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n".into();
    let bad_private = serde_json::json!({"ingressGateways": [{"address": "not an address!", "port": 15443}], "networkName": "net-c",
        "services": [{"hostname": "foo.abc.svc.cluster.local", "ports": [{"name": "http", "port": 80}]}]});
    let route = |path: &str, body: &str| Route {
        r#match: Some(RouteMatch { path_specifier: Some(route_match::PathSpecifier::Path(path.into())), ..Default::default() }),
        action: Some(route::Action::DirectResponse(DirectResponseAction { status: 200, body: dp::inline(body), ..Default::default() })),
        ..Default::default()
    };
    let routes = vec![
        route("/c/metadata/public/public.json", &serde_json::to_string(&c.public_metadata()).unwrap()),
        route("/c/metadata/private/multicluster.json", &bad_private.to_string()),
        route("/d/metadata/public/public.json", &serde_json::to_string(&broken_d).unwrap()),
    ];
    let chain = FilterChain {
        transport_socket: Some(tls_socket(dp::server_tls(&cert, &key))),
        filters: vec![dp::hcm_filter(dp::hcm("hostile", vec![dp::virtual_host("all", &["*"], routes)], vec![]))],
        ..Default::default()
    };
    let tls = dp::listener("tls", std::net::SocketAddr::from((hostile.ip(1), port)), vec![chain]);
    let typed = Bootstrap { static_resources: Some(StaticResources { listeners: vec![tls], ..Default::default() }), ..Default::default() };
    let _hostile = Envoy::start(EnvoySpec::typed("gateway-68-hostile".into(), hostile, 1, typed));
    for (name, prefix) in [("cluster-c", "c"), ("cluster-d", "d")] {
        cs[0].peers.push(PeerRef {
            object_name: name.into(),
            endpoint: format!("https://{}:{port}/{prefix}/metadata", hostile.ip(1)),
            ca_pem: ca.pem(),
        });
    }
    cs[0].rewrite_standalone();
    let sc = cs[0].agent.wait_condition("cluster-c", "PrivateMetadataExchangeReady", "False", READY);
    let cond = |s: &serde_json::Value, t: &str| s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
    let pc = cond(&sc, "PrivateMetadataExchangeReady");
    assert_eq!(pc["reason"], "InvalidDocument", "{pc}");
    assert!(pc["message"].as_str().unwrap().contains("ingressGateways[0].address"), "{pc}");
    let sd = cs[0].agent.wait_condition("cluster-d", "PublicMetadataExchangeReady", "False", READY);
    let pd = cond(&sd, "PublicMetadataExchangeReady");
    assert_eq!(pd["reason"], "InvalidDocument", "{pd}");
    assert!(pd["message"].as_str().unwrap().contains("rootCA"), "{pd}");
    // Nothing of either reaches the sidecar.
    let dump = sidecar.config_dump();
    let text = dump.to_string();
    assert!(
        !text.contains("not an address!") && !text.contains("multicloud-cluster-c") && !text.contains(&d.uuid) && !text.contains(&c.uuid),
        "hostile data reached Envoy"
    );
    assert!(dump::secrets(&dump).contains(&"default".to_string()));

    // Force a NACK: a must-staple certificate with no OCSP response. Envoy's
    // /certs lists the certificates its TLS contexts actually use.
    let in_force = || -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&sidecar.admin_get("/certs").unwrap()).unwrap();
        let mut serials: Vec<String> = v["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["serial_number"].as_str().map(String::from))
            .collect();
        serials.sort();
        serials
    };
    let before = in_force();
    assert!(!before.is_empty(), "the inbound listener uses the workload certificate");
    assert!(!dump::secret(&dump, "default").unwrap().to_string().contains("PRIVATE KEY"), "the key is redacted in config_dump");
    let (other_cert, other_key) = cs[0].id.workload_cert_must_staple("abc", "foo");
    cs[0].agent.set_workload_cert(&other_cert, &other_key);
    cs[0].agent.restart();
    let nack = wait_until("the agent to report the sidecar's NACK", READY, || {
        let v = cs[0].agent.xds_view();
        let n = v["proxies"].as_array().and_then(|ps| {
            ps.iter().filter(|p| p["group"] == "sidecar").find_map(|p| {
                let s = &p["types"][multicloud_proto::type_url::SECRET]["last_nack"];
                (!s.is_null()).then(|| s.clone())
            })
        });
        n.ok_or_else(|| v.to_string())
    });
    assert!(nack["message"].as_str().is_some_and(|m| m.contains("must-staple")), "Envoy's own reason: {nack}");
    assert!(cs[0].agent.metrics().lines().any(|l| l.starts_with("multicloud_agent_xds_nacks_total ") && !l.ends_with(" 0")));
    assert_eq!(in_force(), before, "Envoy keeps using the last good certificate");
}
