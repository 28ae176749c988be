//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! Istio root rotation under load. Cluster A's workload calls `foo.abc`,
//! which only cluster B runs, through A's sidecar, the whole time (a bounded
//! loop). B moves from root R1 to R2 as an operator would:
//! 1. B's root bundle becomes R1 + R2 (its facts: the standalone file's
//!    `rootCA`). Nobody touches A: its agent learns the bundle from B's public
//!    document (fetched over B's pinned metadata TLS, UUID pin held) and
//!    A's sidecar trusts both for B's copy of `foo`;
//! 2. once it does, B's certificates are re-issued from R2: the workload
//!    certificate its sidecar presents, and the gateway's (the files the
//!    standalone agent serves, re-read without a restart);
//! 3. once B's proxies present them, R1 leaves B's bundle, and A drops it.
//!
//! Each step waits for the state the next needs, in the proxies' own
//! configuration (config_dump). Not one call may fail. Afterwards B's xDS
//! port takes a client certificate of R2 and refuses one of R1. Once with
//! passthrough gateways (37-38: A's sidecar checks B's workload certificate
//! against B's roots) and once identity-enforcing (39-40: A's sidecar checks
//! B's gateway, and B's sidecar the gateway's re-originated calls against
//! its local bundle).
//!
//! What stays R1's: the test bed's proxies' own xDS client certificates
//! (static in their bootstraps; in a cluster pilot-agent re-issues them from
//! istiod's new CA). Their ADS streams stay up through the drop.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::MeshMode;
use multicloud_core::naming::{gateway_local_cluster_name, sameness_cluster_name};
use multicloud_core::naming::{peer_root_secret_name, LOCAL_ROOT_SECRET, TRUST_BUNDLE_SECRET};
use multicloud_e2e::fixtures::Ca;
use multicloud_e2e::gateway::GATEWAY_SERVICE_ACCOUNT;
use multicloud_e2e::load::{CallLoop, LoopState};
use multicloud_e2e::mesh::{start_mesh, wait_joined, Cluster, MeshOptions, TrafficOptions, FOO};
use multicloud_e2e::xds_client::{fetch, node, Api, Transport};
use multicloud_e2e::{dump, wait_until, SimCluster};
use multicloud_proto::traffic::Sameness;
use multicloud_proto::type_url::SECRET;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);
/// The call loop's bounds: one call every 20 ms, for at most this long or
/// this many calls.
const LOOP_FOR: Duration = Duration::from_secs(180);
const LOOP_CALLS: usize = 6000;
/// Calls that must go through after each step before the next is taken.
const CALLS_PER_STEP: usize = 50;
/// Istio's SDS name of a workload's certificate (the standalone agent's default).
const CERT_SECRET: &str = "default";

/// A PEM's base64 body on one line: how a certificate is found in a dump
/// whatever the line breaks.
fn body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()
}

fn holds(haystack: &str, pem: &str) -> bool {
    haystack.lines().filter(|l| !l.starts_with("-----")).collect::<String>().contains(&body(pem))
}

/// A validation secret's PEM bundle in `envoy`'s configuration, or a
/// certificate secret's chain.
fn secret_pem(c: &multicloud_e2e::envoy::Envoy, name: &str) -> Result<String, String> {
    let s = dump::secret(&c.config_dump(), name).ok_or_else(|| format!("no secret {name}"))?;
    let s = &s["secret"];
    let pem = s["validation_context"]["trusted_ca"]["inline_string"]
        .as_str()
        .or_else(|| s["tls_certificate"]["certificate_chain"]["inline_string"].as_str())
        .ok_or_else(|| format!("secret {name} holds no inline PEM: {s}"))?;
    Ok(pem.to_string())
}

/// Waits until `envoy`'s secret `name` holds each of `present` and none of `absent`.
fn wait_secret(envoy: &multicloud_e2e::envoy::Envoy, name: &str, present: &[&str], absent: &[&str], what: &str) {
    wait_until(what, SETTLE, || {
        let pem = secret_pem(envoy, name)?;
        let missing = present.iter().filter(|p| !holds(&pem, p)).count();
        let stale = absent.iter().filter(|p| holds(&pem, p)).count();
        if missing == 0 && stale == 0 {
            Ok(())
        } else {
            Err(format!("secret {name}: {missing} certificate(s) still missing, {stale} still there"))
        }
    });
}

/// B's facts with `root_pem` as its root bundle (the standalone file's `rootCA`).
fn set_root_bundle(b: &mut Cluster, root_pem: &str) {
    let path = b.agent.dir().join("standalone.yaml");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["cluster"]["rootCA"] = serde_json::json!(root_pem);
    b.agent.rewrite_standalone(&v.to_string());
}

/// Writes `pem` to `path` by rename, so the agent never reads half a file.
fn replace_file(path: &std::path::Path, pem: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The new TLS handshakes each call makes, where they are counted: with
/// passthrough gateways, A's sidecar's to B's workload (its merged
/// cluster); identity-enforcing, B's gateway's to B's workload (its local
/// cluster), since A's connection to B's gateway is pooled across calls.
fn handshakes(cs: &[&Cluster], mode: MeshMode) -> u64 {
    match mode {
        MeshMode::Passthrough => {
            let stat = format!("cluster.{}.ssl.handshake", sameness_cluster_name(FOO, 80));
            cs[0].traffic.as_ref().unwrap().sidecar.stat(&stat).unwrap_or(0)
        }
        MeshMode::IdentityEnforcing => {
            cs[1].gateway.stat(&format!("cluster.{}.ssl.handshake", gateway_local_cluster_name(FOO, 80))).unwrap_or(0)
        }
    }
}

/// Waits until `CALLS_PER_STEP` more calls have gone through since now,
/// each on a handshake of its own; returns the handshakes.
fn wait_calls(cs: &[&Cluster], mode: MeshMode, calls: &CallLoop, what: &str) -> u64 {
    let (from, hs) = (calls.ok(), handshakes(cs, mode));
    calls.wait_ok(from, CALLS_PER_STEP, what, SETTLE);
    let made = handshakes(cs, mode) - hs;
    assert!(made as usize >= CALLS_PER_STEP - 1, "{what}: each call a new handshake ({made} for {CALLS_PER_STEP} calls)");
    made
}

fn rotate_under_load(sims: [SimCluster; 2], mode: MeshMode) {
    // A passthrough gateway only forwards by SNI: it holds no certificate.
    let enforcing = mode == MeshMode::IdentityEnforcing;
    // Every call a new connection: each goes through a handshake made with
    // the certificates and roots in force at that moment.
    let traffic =
        TrafficOptions { mode, sameness: Sameness::Balanced, foo_in: &[false, true], local_route: false, one_request_per_connection: true };
    let mut cs = start_mesh(&sims, MeshOptions { ads: Some(false), traffic: Some(traffic), ..Default::default() });
    wait_joined(&cs, SETTLE);
    let b_name = Cluster::object_name(cs[1].sim);
    let answered_by_b = |c: &Cluster| -> Result<(), String> {
        let r = c.call(FOO, &[])?;
        if r.status == 200 && r.json()["cluster"] == b_name.as_str() {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text().chars().take(200).collect::<String>()))
        }
    };
    wait_until("A's call to foo to reach B", SETTLE, || answered_by_b(&cs[0]));

    let r1 = cs[1].id.root_pem();
    let r2_ca = Ca::istio_root(&format!("{b_name} (R2)"));
    let r2 = r2_ca.pem();
    let b_uuid = cs[1].id.uuid.clone();
    let peer_root = peer_root_secret_name(&b_uuid);
    let a_log_before = cs[0].agent.log().matches("root CA bundle changed").count();

    let state = LoopState::default();
    let mut took = Vec::new();
    let mut handshakes_made = Vec::new();
    let (left, right) = cs.split_at_mut(1);
    let (a, b) = (&left[0], &mut right[0]);
    std::thread::scope(|s| {
        let calls = CallLoop::start(s, &state, Duration::from_millis(20), LOOP_CALLS, LOOP_FOR, |_| answered_by_b(a));
        handshakes_made.push(wait_calls(&[a, b], mode, &calls, "calls before the rotation"));

        // 1. B's bundle: R1 + R2. A learns it from B's public document.
        let t = Instant::now();
        set_root_bundle(b, &format!("{r1}{r2}"));
        let a_sidecar = &a.traffic.as_ref().unwrap().sidecar;
        wait_secret(a_sidecar, &peer_root, &[&r1, &r2], &[], "A's sidecar to trust R1 and R2 for B");
        wait_secret(&b.traffic.as_ref().unwrap().sidecar, TRUST_BUNDLE_SECRET, &[&r1, &r2], &[], "B's sidecar to take R1 and R2 callers");
        if enforcing {
            wait_secret(&b.gateway, LOCAL_ROOT_SECRET, &[&r1, &r2], &[], "B's gateway to trust R1 and R2 for local workloads");
        }
        took.push(("bundle R1+R2 in A's and B's proxies", t.elapsed()));
        handshakes_made.push(wait_calls(&[a, b], mode, &calls, "calls with both roots trusted"));

        // 2. B's certificates from R2, to the files its agent serves.
        let t = Instant::now();
        let (wc, wk) = r2_ca.workload_cert("abc", "foo");
        let (gc, gk) = r2_ca.workload_cert(GATEWAY_SERVICE_ACCOUNT.0, GATEWAY_SERVICE_ACCOUNT.1);
        let dir = b.agent.dir().to_path_buf();
        replace_file(&dir.join("workload.key"), &wk);
        replace_file(&dir.join("workload.crt"), &wc);
        replace_file(&dir.join("gateway.key"), &gk);
        replace_file(&dir.join("gateway.crt"), &gc);
        wait_secret(&b.traffic.as_ref().unwrap().sidecar, CERT_SECRET, &[&wc], &[], "B's sidecar to present its R2 certificate");
        if enforcing {
            wait_secret(&b.gateway, CERT_SECRET, &[&gc], &[], "B's gateway to present its R2 certificate");
        }
        took.push(("B's proxies on R2 certificates", t.elapsed()));
        handshakes_made.push(wait_calls(&[a, b], mode, &calls, "calls to B's R2 certificates"));

        // 3. R1 leaves B's bundle; A drops it.
        let t = Instant::now();
        set_root_bundle(b, &r2);
        wait_secret(a_sidecar, &peer_root, &[&r2], &[&r1], "A's sidecar to trust R2 alone for B");
        wait_secret(
            &b.traffic.as_ref().unwrap().sidecar,
            TRUST_BUNDLE_SECRET,
            &[&r2],
            &[&r1],
            "B's sidecar to take R2 callers alone (of B's)",
        );
        if enforcing {
            wait_secret(&b.gateway, LOCAL_ROOT_SECRET, &[&r2], &[&r1], "B's gateway to trust R2 alone for local workloads");
        }
        took.push(("R1 dropped from A's and B's proxies", t.elapsed()));
        handshakes_made.push(wait_calls(&[a, b], mode, &calls, "calls after R1 is dropped"));
    });

    let t = state.into_tally();
    eprintln!("FIGURES root rotation ({mode:?}): {} calls through, {} failed; steps: {took:?}; new handshakes to B's workload per stage: {handshakes_made:?}", t.ok, t.failed.len());
    assert!(t.failed.is_empty(), "no call fails during a root rotation ({} through): {:?}", t.ok, t.failed);
    assert!(t.ok >= 4 * CALLS_PER_STEP, "the loop ran through every step: {} calls", t.ok);
    let (a, b) = (&cs[0], &cs[1]);
    // No operator step on A: its agent took both changes from B's document.
    let changes = a.agent.log().matches("root CA bundle changed").count() - a_log_before;
    assert_eq!(changes, 2, "A's agent logs each change of B's root bundle once");
    let s = a.agent.wait_condition(&b_name, "Ready", "True", SETTLE);
    assert_eq!(s["conditions"].as_array().unwrap().iter().filter(|c| c["status"] != "True").count(), 0, "{s}");

    // B's xDS port follows its bundle: a workload certificate of R2 is let
    // in, one of R1 (what the test bed's proxies still hold) no longer is.
    let sidecar_node = || node("sidecar~127.0.0.1~foo.abc~abc.svc.cluster.local", None);
    let with = |ca: &Ca| Transport::Tls { client_cert: Some(ca.workload_cert("abc", "foo")) };
    let r = fetch(b.agent.xds_addr(), &with(&r2_ca), sidecar_node(), Api::Ads, SECRET, &[LOCAL_ROOT_SECRET]);
    assert!(r.is_ok(), "an R2 client certificate is served: {r:?}");
    let r = fetch(b.agent.xds_addr(), &with(&b.id.root), sidecar_node(), Api::Ads, SECRET, &[LOCAL_ROOT_SECRET]);
    assert!(r.is_err(), "an R1 client certificate is refused once R1 is dropped: {r:?}");
}

#[test]
fn a_root_rotates_under_cross_cluster_calls_with_passthrough_gateways_and_none_fails() {
    rotate_under_load([SimCluster(37), SimCluster(38)], MeshMode::Passthrough);
}

#[test]
fn a_root_rotates_under_cross_cluster_calls_with_identity_enforcing_gateways_and_none_fails() {
    rotate_under_load([SimCluster(39), SimCluster(40)], MeshMode::IdentityEnforcing);
}
