//! Tier: real Istio. An Istio root rotation under cross-cluster calls, by
//! Istio's plug-in CA procedure. Clusters A (146) and B (147) as in
//! tests/tests/istio_mesh.rs (real API servers, real istiods, pilot-agent-run
//! gateways and sidecars, the agents in Kubernetes mode), except that B's
//! istiod signs with a plugged-in intermediate (`cacerts` files in
//! `ROOT_CA_DIR`, as the Secret's mount would hold them): I1 under root R1.
//!
//! A's client calls B's `foo` the whole time (bounded), each call on a new
//! connection (A's DestinationRule: one request per connection), so each is
//! a handshake in which A's sidecar checks B's workload certificate against
//! the roots it holds for B at that moment. B's operator then:
//! 1. adds R2 to `root-cert.pem` (R1 + R2). istiod takes the larger bundle
//!    (multi-root mesh) and publishes it in `istio-ca-root-cert`; B's agent
//!    publishes it as its `rootCA`; A's agent takes it from B's verified
//!    metadata endpoint and writes it into A's mesh config; A's istiod pushes
//!    it to A's client. Nobody touches A;
//! 2. once A's client holds R2: switches the signing CA to I2 under R2.
//!    B's proxies (short certificate lifetimes here) rotate onto I2;
//! 3. once they have: drops R1 (`root-cert.pem` = R2), and A's client
//!    drops it too.
//!
//! Not one call may fail. The kubelet's part, refreshing the
//! `istio-ca-root-cert` volume in B's pods, is the test bed's: it copies the
//! ConfigMap into B's proxies' `root-cert.pem` after each step.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::fixtures::Ca;
use multicloud_e2e::istio::{published_root, IstioGateway};
use multicloud_e2e::istio_mesh::{call_foo, has_root, rootca, start_client, start_foo_with, strict_mtls, FOO, FOO_PORT};
use multicloud_e2e::kube_mesh::{link_all, object_name, start_kube_mesh, KubeCluster, KubeMeshOptions};
use multicloud_e2e::load::{CallLoop, LoopState};
use multicloud_e2e::{wait_until, SimCluster};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const SIMS: [SimCluster; 2] = [SimCluster(146), SimCluster(147)];
const JOIN: Duration = Duration::from_secs(120);
/// B's proxies' certificate lifetime (pilot-agent's `SECRET_TTL`): they
/// renew at half of it, so a new signing CA reaches them within that.
const B_CERT_TTL: &str = "30s";
const STEP: Duration = Duration::from_secs(90);
/// The call loop's bounds.
const LOOP_FOR: Duration = Duration::from_secs(420);
const LOOP_CALLS: usize = 8000;
const CALLS_PER_STEP: usize = 40;

/// `cacerts` as Istio's plug-in CA reads it: the signing CA, its key, its
/// chain to the root, and the roots.
fn write_cacerts(dir: &Path, signing: &Ca, root: &Ca, roots: &[&Ca]) {
    let files = [
        ("ca-key.pem", signing.key_pem()),
        ("ca-cert.pem", signing.pem()),
        ("cert-chain.pem", format!("{}{}", signing.pem(), root.pem())),
        ("root-cert.pem", roots.iter().map(|r| r.pem()).collect::<String>()),
    ];
    for (name, text) in files {
        // By rename, as a Secret volume's update is: istiod never reads half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// The kubelet's part: B's proxies' mounted `root-cert.pem` follows the
/// ConfigMap istiod writes.
fn refresh_root_volume(b: &KubeCluster, proxies: &[&IstioGateway]) {
    let root = published_root(b.cp, JOIN);
    for p in proxies {
        std::fs::write(p.dir().join("var/run/secrets/istio/root-cert.pem"), &root).unwrap();
    }
}

/// Waits until `what` holds (checked every 200 ms, up to [`STEP`]).
fn wait_for(what: &str, f: impl FnMut() -> Result<(), String>) {
    wait_until(what, STEP, f);
}

fn wait_configmap(b: &KubeCluster, present: &[&Ca], absent: &[&Ca], what: &str) {
    wait_for(what, || {
        let root = published_root(b.cp, JOIN);
        let ok = present.iter().all(|r| has_root(&root, &r.pem())) && !absent.iter().any(|r| has_root(&root, &r.pem()));
        if ok {
            Ok(())
        } else {
            Err(format!("istio-ca-root-cert: {} certificate(s)", root.matches("BEGIN CERTIFICATE").count()))
        }
    });
}

fn wait_rootca(p: &IstioGateway, present: &[&Ca], absent: &[&Ca], what: &str) {
    wait_for(what, || {
        let bundle = rootca(p);
        let ok = present.iter().all(|r| has_root(&bundle, &r.pem())) && !absent.iter().any(|r| has_root(&bundle, &r.pem()));
        if ok {
            Ok(())
        } else {
            Err(format!("ROOTCA: {} certificate(s)", bundle.matches("BEGIN CERTIFICATE").count()))
        }
    });
}

/// Waits until `p`'s workload certificate chain (what pilot-agent wrote
/// out) carries `signer`.
fn wait_signed_by(p: &IstioGateway, signer: &Ca, what: &str) {
    wait_for(what, || match p.workload_cert_pem() {
        Some(chain) if has_root(&chain, &signer.pem()) => Ok(()),
        Some(_) => Err("still the old signing CA".into()),
        None => Err("no certificate yet".into()),
    });
}

fn wait_calls(calls: &CallLoop, what: &str) {
    calls.wait_ok(calls.ok(), CALLS_PER_STEP, what, STEP);
}

/// Connections A's client opened to `foo` (its `outbound|PORT||foo` hosts).
fn connections(client: &IstioGateway) -> u64 {
    let prefix = format!("outbound|{FOO_PORT}||{FOO}::");
    client
        .admin_get("/clusters")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("::cx_total::"))
        .filter_map(|l| l.rsplit("::").next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

#[test]
fn b_rotates_its_istio_root_by_cacerts_under_calls_from_a_and_none_fails() {
    let t0 = Instant::now();
    let name_b = object_name(SIMS[1]);
    let (r1, r2) = (Ca::istio_root(&format!("{name_b} R1")), Ca::istio_root(&format!("{name_b} R2")));
    let (i1, i2) = (r1.intermediate(&format!("{name_b} I1")), r2.intermediate(&format!("{name_b} I2")));
    let cacerts = tempfile::Builder::new().prefix("multicloud-cacerts-147-").tempdir().unwrap();
    write_cacerts(cacerts.path(), &i1, &r1, &[&r1]);

    let short_ttl = vec![("SECRET_TTL".to_string(), B_CERT_TTL.to_string())];
    let opts = KubeMeshOptions {
        replicas: 1,
        istio: true,
        istiod_env: vec![vec![], vec![("ROOT_CA_DIR".into(), cacerts.path().display().to_string())]],
        istio_gateway_env: vec![vec![], short_ttl.clone()],
        defer_link: true,
        ..Default::default()
    };
    let clusters = start_kube_mesh(&SIMS, opts);
    let (a, b) = (&clusters[0], &clusters[1]);
    link_all(&clusters);
    a.wait_imc_ready(&name_b, JOIN);
    b.wait_imc_ready(&object_name(SIMS[0]), JOIN);
    let root_b = published_root(b.cp, JOIN);
    assert!(has_root(&root_b, &r1.pem()) && !has_root(&root_b, &r2.pem()), "B's istiod runs on the plugged-in CA (R1)");
    for c in [a, b] {
        strict_mtls(c);
    }
    // B's foo with the short certificate lifetime.
    let (_foo_app, foo) = start_foo_with(b, &short_ttl);
    let (client, client_addr, _) = start_client(a);
    // One request per connection from A's client to foo: every call a handshake.
    a.cp.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: foo, namespace: abc}}\n\
         spec: {{host: {FOO}, trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}}}}}\n"
    ))
    .unwrap();
    let answered_by_b = |addr: SocketAddr, i: usize| -> Result<(), String> {
        match call_foo(addr, &format!("/root-rotation/{i}")) {
            Ok(r) if r.status == 200 && r.json()["cluster"] == name_b.as_str() => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.text().chars().take(200).collect::<String>())),
            Err(e) => Err(e),
        }
    };
    wait_until("A's client to call foo, answered by B", JOIN, || answered_by_b(client_addr, 0));
    wait_signed_by(&foo, &i1, "B's foo on I1");
    let t_ready = t0.elapsed();
    let gateway_b = b.istio_gateway.as_ref().unwrap();

    let state = LoopState::default();
    let mut took = Vec::new();
    let cx_before = connections(&client);
    std::thread::scope(|s| {
        let calls = CallLoop::start(s, &state, Duration::from_millis(50), LOOP_CALLS, LOOP_FOR, |i| answered_by_b(client_addr, i));
        wait_calls(&calls, "calls before the rotation");

        // 1. R1 + R2.
        let t = Instant::now();
        write_cacerts(cacerts.path(), &i1, &r1, &[&r1, &r2]);
        wait_configmap(b, &[&r1, &r2], &[], "B's istiod to publish R1 + R2");
        refresh_root_volume(b, &[&foo, gateway_b]);
        wait_rootca(
            &client,
            &[&r1, &r2],
            &[],
            "A's client to trust R1 and R2 for B (from B's public document, through A's agent and istiod)",
        );
        took.push(("R1 + R2 trusted by A's client", t.elapsed()));
        wait_calls(&calls, "calls with both roots trusted");

        // 2. The signing CA moves to I2 (under R2).
        let t = Instant::now();
        write_cacerts(cacerts.path(), &i2, &r2, &[&r1, &r2]);
        wait_signed_by(&foo, &i2, "B's foo to renew onto I2");
        wait_signed_by(gateway_b, &i2, "B's gateway to renew onto I2");
        took.push(("B's proxies on I2", t.elapsed()));
        wait_calls(&calls, "calls to B's I2 certificates");

        // 3. R1 dropped.
        let t = Instant::now();
        write_cacerts(cacerts.path(), &i2, &r2, &[&r2]);
        wait_configmap(b, &[&r2], &[&r1], "B's istiod to publish R2 alone");
        refresh_root_volume(b, &[&foo, gateway_b]);
        wait_rootca(&client, &[&r2], &[&r1], "A's client to drop R1");
        took.push(("R1 dropped by A's client", t.elapsed()));
        wait_calls(&calls, "calls after R1 is dropped");
    });
    let t = state.into_tally();
    let cx = connections(&client) - cx_before;
    eprintln!(
        "FIGURES Istio root rotation (cacerts): {} calls through, {} failed, {cx} connections from A's client to foo; steps: {took:?}; mesh ready in {t_ready:?}",
        t.ok,
        t.failed.len()
    );
    assert!(t.failed.is_empty(), "no call fails during an Istio root rotation ({} through): {:?}", t.ok, t.failed);
    assert!(t.ok >= 4 * CALLS_PER_STEP, "{} calls", t.ok);
    // (A few calls may be counted before their connection is: 98 % is the bar.)
    assert!(cx as usize * 100 >= t.ok * 98, "each call on a connection of its own ({cx} connections for {} calls)", t.ok);
    // A's object for B stayed Ready throughout, and is now.
    a.wait_imc_ready(&name_b, JOIN);
}
