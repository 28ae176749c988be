//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! Cross-cluster traffic between simulated clusters, all real: per cluster
//! an agent (standalone), a gateway Envoy whose mesh port the agent
//! programs (LDS/CDS/EDS/SDS/ECDS over ADS), and a workload sidecar Envoy in
//! front of an echo app that reports which cluster answered and who it was
//! told called. Each cluster has its own root CA (generated here) and
//! Istio-style workload certificates; both use `cluster.local`, so cluster
//! A's and cluster B's `foo` carry the very same SPIFFE ID.
//!
//! No static cluster anywhere names a remote service: the application's
//! call to `foo.abc.svc.cluster.local` goes to the agent-served merged
//! cluster `outbound|80||foo.abc.svc.cluster.local|multicloud`.
//!
//! Loopback ranges: 101–102 passthrough, 103–104 identity-enforcing,
//! 105–106 local-first.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::MeshMode;
use multicloud_e2e::mesh::{start_traffic_mesh, wait_joined, Cluster, FOO, SECRET};
use multicloud_e2e::mtls;
use multicloud_e2e::{hosts, wait_until, SimCluster};
use multicloud_proto::traffic::{peer_sni, Sameness, MESH_LISTENER};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn traffic(c: &Cluster) -> &multicloud_e2e::mesh::ClusterTraffic {
    c.traffic.as_ref().expect("traffic test bed")
}

/// Which cluster answered each of `n` calls (`"<status>"` for a non-200).
fn answers(c: &Cluster, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let who = match c.call(host, &[]) {
            Ok(r) if r.status == 200 => r.json()["cluster"].as_str().unwrap_or("?").to_string(),
            Ok(r) => format!("{} {}", r.status, r.text().chars().take(80).collect::<String>()),
            Err(e) => format!("error {e}"),
        };
        *out.entry(who).or_default() += 1;
    }
    out
}

fn wait_answers(c: &Cluster, what: &str, host: &str, n: usize, ok: impl Fn(&BTreeMap<String, usize>) -> bool) -> BTreeMap<String, usize> {
    wait_until(what, WAIT, || {
        let a = answers(c, host, n);
        if ok(&a) {
            Ok(a)
        } else {
            Err(format!("{a:?}"))
        }
    })
}

fn mesh_addr(c: &Cluster) -> SocketAddr {
    SocketAddr::new(c.sim.ip(hosts::GATEWAY).into(), traffic(c).mesh_port)
}

fn inbound_addr(c: &Cluster) -> SocketAddr {
    SocketAddr::new(c.sim.ip(hosts::SIDECAR).into(), traffic(c).inbound_port)
}

/// Passthrough (Istio-compatible): sameness, failover and return, and what
/// this mode does and does not stop.
#[test]
fn passthrough_sameness_failover_and_limits() {
    let (sa, sb) = (SimCluster(101), SimCluster(102));
    let mut cs = start_traffic_mesh(&[sa, sb], MeshMode::Passthrough, Sameness::Balanced, &[false, true]);
    // Calls before both sides trust each other would fail the handshake and
    // get a gateway ejected by the caller's outlier detector for a while.
    wait_joined(&cs, WAIT);
    let (name_a, name_b) = (Cluster::object_name(sa), Cluster::object_name(sb));

    // 1. A has no foo: B answers every call, through B's gateway.
    let a = wait_answers(&cs[0], "B to answer A's calls to foo", FOO, 10, |a| a.get(&name_b) == Some(&10));
    eprintln!("A has no foo: {a:?}");
    let seen = traffic(&cs[1]).echo.requests();
    let last = seen.last().expect("B's echo saw the call");
    // End-to-end mTLS: B's sidecar saw A's workload certificate (same
    // SPIFFE ID as B's own foo: passthrough cannot tell them apart).
    assert!(last.header("x-forwarded-client-cert").is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/abc/sa/foo")), "{last:?}");
    assert!(cs[1].gateway.stat("tcp.outbound_.80_._.foo.abc.svc.cluster.local.downstream_cx_total").unwrap_or(0) > 0);

    // B must not be ejected from A's view (a call that raced the trust
    // bundles may have failed) before balancing is judged: with B as the only
    // host, panic routing hid that.
    let merged = multicloud_proto::traffic::sameness_cluster_name(FOO, 80);
    wait_until("B's gateway not ejected in A's sidecar", WAIT, || {
        match traffic(&cs[0]).sidecar.stat(&format!("cluster.{merged}.outlier_detection.ejections_active")) {
            Some(0) | None => Ok(()),
            other => Err(format!("ejections_active = {other:?}")),
        }
    });

    // 2. A runs foo too: both answer (balanced: one pool, weighted by ready endpoints).
    cs[0].traffic.as_mut().expect("traffic").runs_foo = true;
    cs[0].rewrite_standalone();
    let both = wait_answers(&cs[0], "both clusters to answer", FOO, 40, |a| {
        a.get(&name_a).copied().unwrap_or(0) >= 5 && a.get(&name_b).copied().unwrap_or(0) >= 5 && a.len() == 2
    });
    eprintln!("both run foo (first sample where both answered): {both:?}");
    // One local endpoint and one remote ready endpoint weigh the same.
    let share = answers(&cs[0], FOO, 60);
    eprintln!("both run foo, steady: {share:?}");
    eprintln!(
        "{}",
        traffic(&cs[0])
            .sidecar
            .admin_get("/stats?filter=multicloud\\.(outlier_detection.ejections_(active|total)|membership_healthy)")
            .unwrap_or_default()
    );
    assert!(share.get(&name_a).copied().unwrap_or(0) >= 15 && share.get(&name_b).copied().unwrap_or(0) >= 15, "{share:?}");

    // 3. B's gateway dies: only A answers, once the outlier detector ejects it
    //    (retries hide the failed attempts meanwhile).
    cs[1].gateway.kill();
    let killed = std::time::Instant::now();
    let only_a = wait_answers(&cs[0], "only A to answer with B's gateway down", FOO, 20, |a| a.get(&name_a) == Some(&20));
    let took = killed.elapsed();
    eprintln!("B's gateway down: {only_a:?} after {took:?}");
    // Three consecutive gateway failures eject at once; well inside one
    // ejection period (15 s), not after health checks or timeouts.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let sidecar_a = &traffic(&cs[0]).sidecar;
    let ejected = format!(
        "cluster.{}.outlier_detection.ejections_enforced_consecutive_gateway_failure",
        multicloud_proto::traffic::sameness_cluster_name(FOO, 80)
    );
    assert!(sidecar_a.stat(&ejected).unwrap_or(0) >= 1, "{ejected}");
    // Calls keep being answered by A alone (the route's retries take any
    // attempt that still reaches the dead gateway to A).
    let after_ejection = answers(&cs[0], FOO, 20);
    assert_eq!(after_ejection.get(&name_a), Some(&20), "{after_ejection:?}");

    // 4. B's gateway returns: B serves again once its ejection (15 s, checked
    //    every 5 s) ends.
    cs[1].gateway.restart();
    let restarted = std::time::Instant::now();
    let back = wait_answers(&cs[0], "B to serve again", FOO, 40, |a| a.get(&name_b).copied().unwrap_or(0) >= 5);
    eprintln!("B's gateway back: {back:?} after {:?}", restarted.elapsed());
    eprintln!(
        "{}",
        traffic(&cs[0])
            .sidecar
            .admin_get("/stats?filter=multicloud\\.(outlier_detection.ejections_(active|total|enforced_total)|membership_(healthy|total))")
            .unwrap_or_default()
    );

    // Security, passthrough mode.
    let b_foo = cs[1].id.workload_cert("abc", "foo");
    let third = multicloud_e2e::fixtures::ClusterIdentity::generate("rogue");
    let rogue = third.workload_cert("abc", "foo");
    let sni_foo = multicloud_proto::mesh::sni(FOO, 80);
    // A CA that is no peer reaches B's mesh port: the gateway passes the
    // bytes through, B's sidecar refuses the handshake.
    let r = mtls::get(mesh_addr(&cs[1]), &sni_foo, Some(&rogue), FOO, "/", &[]);
    assert!(r.is_refused(), "third CA through B's mesh port: {r:?}");
    // Only exported services have a route through the mesh port.
    let r = mtls::get(mesh_addr(&cs[0]), &multicloud_proto::mesh::sni(SECRET, 80), Some(&b_foo), SECRET, "/", &[]);
    assert!(r.is_refused(), "unexported service through A's mesh port: {r:?}");
    // What passthrough cannot stop (docs/traffic.md): a certificate B's CA
    // minted for ns/abc/sa/foo is accepted by A's own workloads as foo, and
    // a caller-identity header arrives as the caller wrote it.
    let r = mtls::get(inbound_addr(&cs[0]), &sni_foo, Some(&b_foo), SECRET, "/", &[("x-multicloud-caller-cluster", "forged")]);
    assert_eq!(r.status(), Some(200), "passthrough: B's certificate reaches A's workload directly: {r:?}");
    assert!(r.body().contains("\"x-multicloud-caller-cluster\":\"forged\""), "{}", r.body());
}

/// Identity-enforcing: the gateway terminates the peer's mTLS, knows the
/// peer, allows only exported services and tells the application who called.
#[test]
fn an_identity_enforcing_gateway_knows_the_peer_and_serves_only_exported_services() {
    let (sa, sb) = (SimCluster(103), SimCluster(104));
    let cs = start_traffic_mesh(&[sa, sb], MeshMode::IdentityEnforcing, Sameness::Balanced, &[false, true]);
    // Calls before both sides trust each other would fail the handshake and
    // get a gateway ejected by the caller's outlier detector for a while.
    wait_joined(&cs, WAIT);
    let (name_a, name_b) = (Cluster::object_name(sa), Cluster::object_name(sb));
    wait_answers(&cs[0], "B to answer A's calls to foo", FOO, 5, |a| a.get(&name_b) == Some(&5));

    // The application in B is told who called, by the gateway, and a forged
    // copy of that header from A's application is replaced.
    let r = cs[0].call(FOO, &[("x-multicloud-caller-cluster", "forged"), ("x-multicloud-caller-spiffe", "spiffe://evil")]).expect("call");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let h = &body["headers"];
    assert_eq!(body["cluster"], name_b);
    assert_eq!(h["x-multicloud-caller-cluster"], name_a, "{body}");
    assert_eq!(h["x-multicloud-caller-cluster-uuid"], cs[0].id.uuid.as_str(), "{body}");
    assert_eq!(h["x-multicloud-caller-spiffe"], "spiffe://cluster.local/ns/abc/sa/foo", "{body}");
    // B's workload saw B's gateway as its mTLS peer (re-originated locally).
    assert!(
        h["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account")),
        "{body}"
    );

    let b_foo = cs[1].id.workload_cert("abc", "foo");
    let third = multicloud_e2e::fixtures::ClusterIdentity::generate("rogue");
    let rogue = third.workload_cert("abc", "foo");
    let sni_as_b = peer_sni(&cs[1].id.uuid);
    let sni_as_a = peer_sni(&cs[0].id.uuid);

    // A third CA presents itself as peer A to B's mesh port: refused in the handshake.
    let r = mtls::get(mesh_addr(&cs[1]), &sni_as_a, Some(&rogue), FOO, "/", &[]);
    assert!(r.is_refused(), "third CA: {r:?}");
    // No client certificate at all: refused.
    let r = mtls::get(mesh_addr(&cs[1]), &sni_as_a, None, FOO, "/", &[]);
    assert!(r.is_refused(), "no client certificate: {r:?}");
    // B's CA mints ns/abc/sa/foo and asks A's gateway, as peer B, for a
    // service A does not export: refused by the filter. (A's mesh listener
    // is active once A's agent knows B's private document and A's gateway
    // has the listener's secrets and filter: the calls above went through
    // B's, which may be ready first.)
    wait_until("A's gateway to have its mesh listener active", WAIT, || cs[0].gateway.active_listener(MESH_LISTENER));
    let r = mtls::get(mesh_addr(&cs[0]), &sni_as_b, Some(&b_foo), SECRET, "/", &[]);
    assert_eq!(r.status(), Some(403), "unexported service: {r:?}");
    assert!(r.body().contains("ServiceNotExported"), "{}", r.body());
    // ... and A's gateway counts it under peer B.
    let refused = format!("wasmcustom.multicloud_mesh.peer.{name_b}.refused.service_not_exported");
    wait_until("the refusal counter", WAIT, || match cs[0].gateway.stat(&refused) {
        Some(n) if n >= 1 => Ok(()),
        other => Err(format!("{refused} = {other:?}")),
    });
    // B's certificate tries to pass as A's own workload: as A (its own
    // cluster's SNI) there is no chain, and A's workloads trust A's root only.
    let r = mtls::get(mesh_addr(&cs[0]), &sni_as_a, Some(&b_foo), SECRET, "/", &[]);
    assert!(r.is_refused(), "B's certificate as cluster A at A's gateway: {r:?}");
    let r = mtls::get(inbound_addr(&cs[0]), &multicloud_proto::mesh::sni(SECRET, 80), Some(&b_foo), SECRET, "/", &[]);
    assert!(r.is_refused(), "B's certificate straight to A's workload: {r:?}");
    // Allowed calls are counted per peer.
    let allowed = format!("wasmcustom.multicloud_mesh.peer.{name_a}.allowed");
    assert!(cs[1].gateway.stat(&allowed).unwrap_or(0) >= 5, "{allowed}");
}

/// Local first: while the local copy is healthy only it answers; when it
/// fails, the peer's copy takes over (Envoy's priority spill-over).
#[test]
fn local_first_fails_over_to_the_peer() {
    let (sa, sb) = (SimCluster(105), SimCluster(106));
    let cs = start_traffic_mesh(&[sa, sb], MeshMode::Passthrough, Sameness::LocalFirst, &[true, true]);
    // Calls before both sides trust each other would fail the handshake and
    // get a gateway ejected by the caller's outlier detector for a while.
    wait_joined(&cs, WAIT);
    let (name_a, name_b) = (Cluster::object_name(sa), Cluster::object_name(sb));
    // Wait until B's copy is known to A's sidecar (two localities in EDS)...
    let sidecar_a = &traffic(&cs[0]).sidecar;
    let cluster = multicloud_proto::traffic::sameness_cluster_name(FOO, 80);
    wait_until("A's sidecar to know both copies of foo", WAIT, || {
        let eps = multicloud_e2e::dump::endpoints(&sidecar_a.config_dump(), &cluster);
        if eps.len() == 2 {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    });
    // ... then only the local copy answers.
    let local = answers(&cs[0], FOO, 30);
    assert_eq!(local.get(&name_a), Some(&30), "{local:?}");
    // A's foo dies: B's copy answers.
    traffic(&cs[0]).echo.stop();
    let remote = wait_answers(&cs[0], "B to take over", FOO, 20, |a| a.get(&name_b) == Some(&20));
    eprintln!("A's foo down: {remote:?}");
}
