//! `make demo`: two simulated clusters on loopback, each with its own root
//! CA and federation key, each running a real Envoy gateway with the real
//! filter. The demo walks through what federation looks like at the edge:
//! public metadata, a token-guarded private document, and an impersonation
//! attempt that is refused. Everything stops on exit and on Ctrl-C.

use multicloud_core::metadata::PrivateMetadata;
use multicloud_e2e::envoy::Envoy;
use multicloud_e2e::fixtures::{edge_config, sample_private, ClusterIdentity};
use multicloud_e2e::gateway::Gateway;
use multicloud_e2e::upstream::RecordingUpstream;
use multicloud_e2e::{hosts, http, SimCluster};
use sha2::Digest as _;
use std::sync::Mutex;
use std::time::Instant;

/// What must be stopped when the demo ends, whichever way it ends.
static RUNNING: Mutex<Vec<Envoy>> = Mutex::new(Vec::new());

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}] {text}\x1b[0m");
}

fn fingerprint(pem: &str) -> String {
    let der = multicloud_core::pem::CertBundle::from_pem(pem).expect("root").certs_der[0].clone();
    let d = sha2::Sha256::digest(der);
    d.iter().take(8).map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn main() {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: stopping the demo's Envoys");
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clear();
        std::process::exit(130);
    })
    .expect("install Ctrl-C handler");
    let started = Instant::now();

    step(1, "Two clusters, same cluster domain (cluster.local), each with its own Istio root CA");
    let (ca, cb) = (SimCluster(1), SimCluster(2));
    let a = ClusterIdentity::generate("cluster-a");
    let b = ClusterIdentity::generate("cluster-b");
    for (c, id) in [(ca, &a), (cb, &b)] {
        println!("  {:<10} uuid {}  loopback 127.0.{}.0/24  root {}", id.name, id.uuid, c.0, fingerprint(&id.root_pem()));
    }

    step(2, "Start each cluster's ingress gateway: real Envoy 1.40 with the multicloud edge filter");
    let ua = RecordingUpstream::start(ca.ip(hosts::UPSTREAM), true);
    let ub = RecordingUpstream::start(cb.ip(hosts::UPSTREAM), true);
    let cfg_a = serde_json::to_string(&edge_config(&a, &[&b], sample_private(ca))).unwrap();
    let cfg_b = serde_json::to_string(&edge_config(&b, &[&a], sample_private(cb))).unwrap();
    let envoys = Envoy::start_all(vec![Gateway::spec(ca, ua.addr(), &cfg_a), Gateway::spec(cb, ub.addr(), &cfg_b)]);
    let urls: Vec<String> = envoys.iter().map(|e| format!("http://{}", e.listener("edge"))).collect();
    RUNNING.lock().unwrap().extend(envoys);
    println!("  cluster-a gateway {}   cluster-b gateway {}", urls[0], urls[1]);

    step(3, "Each side fetches the other's public metadata at its edge");
    for (from, url, want) in [("cluster-a", &urls[1], &b), ("cluster-b", &urls[0], &a)] {
        let r = http::get(&format!("{url}/metadata/public/public.json"));
        let doc = r.json();
        assert_eq!(doc["clusterUUID"], want.uuid);
        println!(
            "  {from} GET {url}/metadata/public/public.json -> {} clusterUUID {} root {} etag {}",
            r.status,
            doc["clusterUUID"].as_str().unwrap(),
            fingerprint(doc["rootCA"].as_str().unwrap()),
            r.header("etag").unwrap_or("-")
        );
    }

    step(4, "Each side presents a signed federation token and reads the other's private metadata");
    let mut private_status = Vec::new();
    for (from, to, url) in [(&a, &b, &urls[1]), (&b, &a, &urls[0])] {
        let token = from.token_for(to, "private-multicluster");
        let r = http::request("GET", &format!("{url}/metadata/private/multicluster.json"), &[("authorization", &format!("Bearer {token}"))]);
        let private: PrivateMetadata = serde_json::from_slice(&r.body).expect("private document");
        println!(
            "  {} -> {} networkName {} gateways {:?} services {:?}",
            from.name,
            r.status,
            private.network_name,
            private.ingress_gateways.iter().map(|g| format!("{}:{}", g.address, g.port)).collect::<Vec<_>>(),
            private.services.iter().map(|s| s.hostname.as_str()).collect::<Vec<_>>()
        );
        private_status.push(r.status == 200);
    }

    step(5, "An impersonation attempt: a third CA's key signs a token claiming to be cluster-a");
    let mut mallory = ClusterIdentity::generate("mallory");
    mallory.uuid = a.uuid.clone();
    let forged = mallory.token_for(&b, "private-multicluster");
    let r = http::request("GET", &format!("{}/metadata/private/multicluster.json", urls[1]), &[("authorization", &format!("Bearer {forged}"))]);
    println!("  -> {} {}", r.status, r.text());
    assert_eq!(r.status, 401);
    let r = http::request("GET", &format!("{}/metadata/private/multicluster.json", urls[1]), &[("authorization", &format!("Bearer {}", a.token_for(&b, "api")))]);
    println!("  a valid token with the wrong scope -> {} {}", r.status, r.text());

    step(6, "Status");
    println!("  {:<10} {:<10} {:<8} {:<9} {:<23} {}", "LOCAL", "PEER", "PUBLIC", "PRIVATE", "PEER ROOT", "REFUSED AT PEER EDGE");
    let guard = RUNNING.lock().unwrap();
    for (i, (local, peer, url)) in [("cluster-a", &b, &urls[1]), ("cluster-b", &a, &urls[0])].into_iter().enumerate() {
        let peer_envoy = &guard[1 - i];
        let refused: u64 = ["token_bad_signature", "token_wrong_scope"]
            .iter()
            .map(|s| peer_envoy.stat(&format!("wasmcustom.multicloud_edge.refused.{s}")).unwrap_or(0))
            .sum();
        let public_ok = http::get(&format!("{url}/metadata/public/public.json")).status == 200;
        println!("  {:<10} {:<10} {:<8} {:<9} {:<23} {}", local, peer.name, if public_ok { "Ready" } else { "Failing" }, if private_status[i] { "Ready" } else { "Failing" }, fingerprint(&peer.root_pem()), refused);
    }
    drop(guard);
    assert!(ua.requests().is_empty() && ub.requests().is_empty(), "no metadata request reached an upstream");
    println!("\nDone in {:.1} s. Stopping both gateways.", started.elapsed().as_secs_f64());
    RUNNING.lock().unwrap().clear();
}
