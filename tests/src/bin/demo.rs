//! `make demo`: two simulated clusters on loopback, each with its own Istio
//! root CA, a real Envoy gateway running the filter, a workload sidecar
//! Envoy in front of an echo app, and the real agent in standalone mode
//! holding an IstioMulticloud object for the other (identity-enforcing mesh
//! ports). The demo shows them join, prints the agents' status, reads the
//! other cluster's private metadata with the agent's own federation key,
//! makes a cross-cluster call by the service's usual name and shows who
//! answered and who the answering app was told called, and shows
//! impersonation attempts refused (at the edge, the mesh port and the
//! agent's xDS port). Everything stops on exit and on Ctrl-C.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::MeshMode;
use multicloud_e2e::fixtures::ClusterIdentity;
use multicloud_e2e::mesh::{start_traffic_mesh, Cluster, FOO, SECRET};
use multicloud_e2e::{hosts, http, mtls, SimCluster};
use multicloud_proto::traffic::{peer_sni, Sameness};
use sha2::Digest as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What must be stopped when the demo ends, whichever way it ends.
static RUNNING: Mutex<Vec<Cluster>> = Mutex::new(Vec::new());
/// Set by Ctrl-C; the main thread stops at its next check and cleans up.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stop_if_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("\ninterrupted: stopping the demo's agents and Envoys");
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clear();
        std::process::exit(130);
    }
}

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}] {text}\x1b[0m");
}

fn fingerprint(pem: &str) -> String {
    match multicloud_core::pem::CertBundle::from_pem(pem) {
        Ok(b) => sha2::Sha256::digest(&b.certs_der[0]).iter().take(6).map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
        Err(_) => "-".into(),
    }
}

fn condition(status: &serde_json::Value, t: &str) -> (String, String) {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .map(|c| (c["status"].as_str().unwrap_or("?").to_string(), c["reason"].as_str().unwrap_or("").to_string()))
        .unwrap_or(("-".into(), String::new()))
}

fn main() {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        // Clean up here if the main thread is not using the clusters; else it
        // does at its next check (within 200 ms). Children die with this
        // process in any case (PR_SET_PDEATHSIG).
        if let Ok(mut running) = RUNNING.try_lock() {
            eprintln!("\ninterrupted: stopping the demo's agents and Envoys");
            running.clear();
            std::process::exit(130);
        }
    })
    .expect("install Ctrl-C handler");
    let started = Instant::now();

    step(1, "Start two clusters (same cluster.local, different Istio roots): agent, gateway Envoy, sidecar Envoy + app each");
    println!("  foo.abc runs in cluster-2 only; secret.abc runs in both and is exported by neither");
    let sims = [SimCluster(1), SimCluster(2)];
    let started_clusters = start_traffic_mesh(&sims, MeshMode::IdentityEnforcing, Sameness::Balanced, &[false, true]);
    RUNNING.lock().unwrap().extend(started_clusters);
    stop_if_interrupted();
    let guard = RUNNING.lock().unwrap();
    let (a, b) = (&guard[0], &guard[1]);
    for c in [a, b] {
        println!(
            "  {:<10} uuid {}  gateway https://{}:{}  agent http://{}  root {}",
            Cluster::object_name(c.sim),
            c.id.uuid,
            c.sim.ip(multicloud_e2e::hosts::GATEWAY),
            c.tls_port,
            c.agent.http_addr(),
            fingerprint(&c.id.root_pem())
        );
    }

    step(2, "Each agent holds an IstioMulticloud object for the other; watch them join");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        let mut lines = Vec::new();
        let mut all_ready = true;
        for (local, peer) in [(a, b), (b, a)] {
            let name = Cluster::object_name(peer.sim);
            let st = local.agent.status()["objects"][&name].clone();
            let (p, pr) = condition(&st, "PublicMetadataExchangeReady");
            let (q, qr) = condition(&st, "PrivateMetadataExchangeReady");
            let (r, rr) = condition(&st, "Ready");
            all_ready &= r == "True";
            lines.push(format!("  {} -> {name}: public {p} {pr}, private {q} {qr}, ready {r} {rr}", Cluster::object_name(local.sim)));
        }
        if lines != last {
            for l in &lines {
                println!("{l}");
            }
            last = lines;
        }
        if all_ready {
            break;
        }
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            drop(guard);
            stop_if_interrupted();
            return;
        }
        if Instant::now() > deadline {
            println!("  the clusters did not join within 60 s; see the agents' /status");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    step(3, "Status, as each agent reports it");
    println!(
        "  {:<10} {:<10} {:<37} {:<7} {:<8} {:<6} {:<21} PEER ROOT",
        "LOCAL", "PEER", "REMOTE UUID", "PUBLIC", "PRIVATE", "READY", "LAST FETCH"
    );
    for (local, peer) in [(a, b), (b, a)] {
        let name = Cluster::object_name(peer.sim);
        let st = local.agent.status()["objects"][&name].clone();
        let cache = &st["metadataCache"];
        println!(
            "  {:<10} {:<10} {:<37} {:<7} {:<8} {:<6} {:<21} {}",
            Cluster::object_name(local.sim),
            name,
            st["remoteClusterUUID"].as_str().unwrap_or("-"),
            condition(&st, "PublicMetadataExchangeReady").0,
            condition(&st, "PrivateMetadataExchangeReady").0,
            condition(&st, "Ready").0,
            cache["private"]["fetchedAt"].as_str().unwrap_or("-"),
            fingerprint(cache["public"]["document"]["rootCA"].as_str().unwrap_or(""))
        );
    }

    step(4, "cluster-1's federation key reads cluster-2's private metadata at cluster-2's edge");
    let key = multicloud_core::pem::ed25519_signing_key_from_pem(&std::fs::read_to_string(a.agent.key_path()).expect("key")).expect("key");
    let now = multicloud_e2e::fixtures::unix_now();
    let token = multicloud_agent::keys::mint(&key, &a.id.uuid, &b.id.uuid, multicloud_core::token::Scope::PrivateMulticluster, now, 60);
    let url = b.gateway_url("/metadata/private/multicluster.json");
    let r = http::request("GET", &url, &[("authorization", &format!("Bearer {token}"))]);
    let doc = r.json();
    println!(
        "  GET {url} -> {} answered by cluster {} gateway: networkName {}, gateways {}, services {}",
        r.status,
        b.id.uuid,
        doc["networkName"],
        doc["ingressGateways"],
        doc["services"].as_array().map(|s| s.len()).unwrap_or(0)
    );

    step(5, "cluster-1's app calls foo.abc.svc.cluster.local (it runs only in cluster-2)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match a.call(FOO, &[("x-multicloud-caller-cluster", "forged-by-the-caller")]) {
            Ok(r) if r.status == 200 => break r.json(),
            other if Instant::now() > deadline => {
                println!("  no answer within 60 s: {other:?}");
                std::process::exit(1);
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let h = &answer["headers"];
    println!("  answered by: {}", answer["cluster"]);
    println!(
        "  the app in {} was told by its gateway: caller cluster {} ({}), caller identity {}",
        answer["cluster"], h["x-multicloud-caller-cluster"], h["x-multicloud-caller-cluster-uuid"], h["x-multicloud-caller-spiffe"]
    );
    println!("  (the caller's own forged x-multicloud-caller-cluster header was replaced)");
    let called_ok = answer["cluster"] == Cluster::object_name(b.sim) && h["x-multicloud-caller-cluster"] == Cluster::object_name(a.sim);

    step(6, "Impersonation attempts");
    let mut mallory = ClusterIdentity::generate("mallory");
    mallory.uuid = a.id.uuid.clone();
    let forged = mallory.token_for(&b.id, "private-multicluster");
    let r = http::request("GET", &url, &[("authorization", &format!("Bearer {forged}"))]);
    println!("  another CA's key signs a metadata token claiming to be cluster-1 -> {} {}", r.status, r.text());
    let mut refused = r.status == 401;
    // cluster-1's mesh listener is active once its agent knows cluster-2's
    // private document and its gateway has the listener's secrets and
    // filter; the call above went through cluster-2's, which may be first.
    multicloud_e2e::wait_until("cluster-1's gateway to have its mesh listener active", Duration::from_secs(30), || {
        a.gateway.active_listener(multicloud_proto::traffic::MESH_LISTENER)
    });
    let mesh_a = std::net::SocketAddr::new(a.sim.ip(hosts::GATEWAY).into(), a.traffic.as_ref().map(|t| t.mesh_port).unwrap_or(0));
    let b_foo = b.id.workload_cert("abc", "foo");
    let r = mtls::get(mesh_a, &peer_sni(&b.id.uuid), Some(&b_foo), SECRET, "/", &[]);
    println!(
        "  cluster-2's CA mints spiffe://cluster.local/ns/abc/sa/foo and asks cluster-1's gateway for secret.abc -> {} {}",
        r.status().map(|s| s.to_string()).unwrap_or_else(|| "refused".into()),
        r.body().trim()
    );
    refused &= r.status() == Some(403);
    let r = mtls::get(mesh_a, &peer_sni(&a.id.uuid), Some(&b_foo), SECRET, "/", &[]);
    println!(
        "  the same certificate poses as cluster-1's own workload -> {}",
        if r.is_refused() { "TLS handshake refused" } else { "NOT refused" }
    );
    refused &= r.is_refused();
    // The agent's xDS port: a workload of cluster-1 (valid certificate)
    // calls itself the gateway to get the API proxy credential.
    let gateway_node =
        multicloud_e2e::xds_client::node("router~10.0.0.7~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local", None);
    let a_foo = multicloud_e2e::xds_client::Transport::Tls { client_cert: Some(a.id.workload_cert("abc", "foo")) };
    let r = multicloud_e2e::xds_client::fetch(
        a.agent.xds_addr(),
        &a_foo,
        gateway_node,
        multicloud_e2e::xds_client::Api::Ads,
        multicloud_proto::type_url::SECRET,
        &[multicloud_core::naming::API_PROXY_CREDENTIAL_SECRET],
    );
    match &r {
        Err(multicloud_e2e::xds_client::Refused::Status { code, message }) => {
            println!("  cluster-1's workload abc/foo claims the gateway's node id at cluster-1's xDS port -> {code:?}: {message}")
        }
        other => println!("  cluster-1's workload abc/foo claims the gateway's node id at cluster-1's xDS port -> NOT refused: {other:?}"),
    }
    refused &= matches!(r, Err(multicloud_e2e::xds_client::Refused::Status { code: tonic::Code::PermissionDenied, .. }));
    drop(guard);
    stop_if_interrupted();
    println!("\nDone in {:.1} s. Stopping agents and Envoys.", started.elapsed().as_secs_f64());
    RUNNING.lock().unwrap().clear();
    if !refused || !called_ok {
        eprintln!("error: the cross-cluster call or a refusal did not go as expected");
        std::process::exit(1);
    }
}
