//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! Federation key rotation with no failed fetch. Clusters A (26) and B (27)
//! are linked. The whole time, a bounded loop plays each cluster's fetcher
//! against the other's gateway: it signs a private-document token with the
//! key the fetching cluster signs with right now (its agent's key file) and
//! asks for the peer's private document. Meanwhile each cluster's own agent
//! keeps fetching the other every second. B's key is rotated, then A's, each
//! through `multicloud-agent rotate-key stage`, `promote` and `finish`, every
//! step taken only once the peer shows the state it needs (the peer's gateway
//! carries the staged key; the fetcher signs with the promoted one). Not one
//! fetch may be refused, and afterwards a token of the dropped key is.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::token::{Audience, Claims};
use multicloud_e2e::mesh::{start_full_mesh, Cluster};
use multicloud_e2e::{wait_until, SimCluster};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SETTLE: Duration = Duration::from_secs(60);
const PRIVATE: &str = "/metadata/private/multicluster.json";
/// The fetch loop's bounds: one fetch per direction every 50 ms, for at most
/// this long or this many rounds.
const LOOP_FOR: Duration = Duration::from_secs(180);
const LOOP_ROUNDS: usize = 3000;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn signing_key(path: &Path) -> ed25519_dalek::SigningKey {
    multicloud_core::pem::ed25519_signing_key_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The line of a public key's PEM that names it (its base64).
fn key_line(pem: &str) -> String {
    pem.lines().find(|l| !l.starts_with("-----")).unwrap().to_string()
}

fn public_pem(key: &ed25519_dalek::SigningKey) -> String {
    multicloud_core::pem::ed25519_public_key_to_pem(&key.verifying_key())
}

/// A private-document token from `from` to `to`, signed with `key`.
fn token(key: &ed25519_dalek::SigningKey, from: &Cluster, to: &Cluster) -> String {
    let t = now();
    multicloud_core::token::sign(
        key,
        &Claims {
            iss: "istio-multicloud".into(),
            sub: from.id.uuid.clone(),
            aud: Audience::One(to.id.uuid.clone()),
            scope: "private-multicluster".into(),
            nbf: t,
            exp: t + 60,
        },
    )
}

fn fetch_private(key: &ed25519_dalek::SigningKey, from: &Cluster, to: &Cluster) -> Result<u16, String> {
    let auth = format!("Bearer {}", token(key, from, to));
    multicloud_e2e::http::try_request("GET", &to.gateway_url(PRIVATE), &[("authorization", &auth)]).map(|r| r.status)
}

fn rotate(step: &str, key: &Path) -> String {
    let out = std::process::Command::new(multicloud_e2e::paths::agent())
        .args(["rotate-key", step, "--min-wait-seconds", "0", "--key"])
        .arg(key)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "rotate-key {step}: {text}");
    text
}

fn unauthorized_fetches(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("multicloud_agent_fetch_total{") && l.contains("result=\"unauthorized\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until `gateway`'s Envoy carries `pem` in its configuration (the
/// edge filter's peer keys), or no longer does.
fn wait_gateway_key(gateway: &Cluster, pem: &str, present: bool, what: &str) {
    let line = key_line(pem);
    wait_until(what, SETTLE, || {
        let dump = gateway.gateway.config_dump().to_string();
        if dump.contains(&line) == present {
            Ok(())
        } else {
            Err(format!("the key is {}in the gateway's configuration", if present { "not " } else { "still " }))
        }
    });
}

/// Waits until `cluster`'s gateway serves `authnKeyPub` = `current` and
/// exactly `additional` beside it.
fn wait_published(cluster: &Cluster, current: &str, additional: &[String], what: &str) {
    wait_until(what, SETTLE, || {
        let r = multicloud_e2e::http::try_request("GET", &cluster.gateway_url("/metadata/public/public.json"), &[])?;
        let doc: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        if multicloud_e2e::fixtures::published_keys(&doc) == (current.to_string(), additional.to_vec()) {
            Ok(())
        } else {
            Err(format!("public.json: {doc}"))
        }
    });
}

/// One cluster's rotation, `peer` fetching from it and verifying its tokens.
fn rotate_cluster(c: &Cluster, peer: &Cluster) {
    let key = c.agent.key_path();
    let old = public_pem(&signing_key(&key));
    rotate("stage", &key);
    let next = public_pem(&signing_key(Path::new(&format!("{}.next", key.display()))));
    wait_published(c, &old, std::slice::from_ref(&next), "the staged key to be published beside the signing key");
    // Promote only once the peer's gateway takes tokens of the next key.
    wait_gateway_key(peer, &next, true, "the peer's gateway to carry the staged key");
    rotate("promote", &key);
    wait_published(c, &next, std::slice::from_ref(&old), "the promoted key to sign, the old one still published");
    // Finish once the cluster's own agent signs with the new key (it
    // published it as authnKeyPub, so it re-read the ring) and its fetches
    // since have gone through.
    let fetched = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("multicloud_agent_fetch_total{") && l.contains("document=\"private\"") && l.contains("result=\"ok\""))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    let before = fetched(&c.agent.metrics());
    wait_until("the agent to fetch with the promoted key", SETTLE, || {
        let n = fetched(&c.agent.metrics());
        if n >= before + 2.0 {
            Ok(())
        } else {
            Err(format!("{n} private fetches"))
        }
    });
    rotate("finish", &key);
    wait_published(c, &next, &[], "the old key to be withdrawn");
    wait_gateway_key(peer, &old, false, "the peer's gateway to drop the old key");
}

#[test]
fn keys_rotate_in_both_directions_with_no_failed_fetch_and_the_old_key_is_refused_after() {
    let cs = start_full_mesh(&[SimCluster(26), SimCluster(27)]);
    let (a, b) = (&cs[0], &cs[1]);
    let (name_a, name_b) = (Cluster::object_name(a.sim), Cluster::object_name(b.sim));
    a.agent.wait_condition(&name_b, "Ready", "True", SETTLE);
    b.agent.wait_condition(&name_a, "Ready", "True", SETTLE);
    let a_key_before = signing_key(&a.agent.key_path());
    let b_key_before = signing_key(&b.agent.key_path());
    let unauthorized_before = (unauthorized_fetches(&a.agent.metrics()), unauthorized_fetches(&b.agent.metrics()));

    // The fetch loop: A -> B and B -> A, each signed with the fetcher's
    // key in force (read from its key file every round).
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    std::thread::scope(|s| {
        let looper = {
            let (stop, tally) = (stop.clone(), tally.clone());
            s.spawn(move || {
                let deadline = Instant::now() + LOOP_FOR;
                for _ in 0..LOOP_ROUNDS {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    for (from, to) in [(a, b), (b, a)] {
                        let key = signing_key(&from.agent.key_path());
                        let r = fetch_private(&key, from, to);
                        let mut t = tally.lock().unwrap();
                        t.0 += 1;
                        if r != Ok(200) {
                            t.1.push(format!("{} -> {}: {r:?}", from.sim.0, to.sim.0));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let started = Instant::now();
        rotate_cluster(b, a);
        let b_took = started.elapsed();
        rotate_cluster(a, b);
        let a_took = started.elapsed() - b_took;
        stop.store(true, Ordering::Relaxed);
        looper.join().unwrap();
        eprintln!("FIGURES key rotation: B's stage..finish {b_took:?}, A's {a_took:?}");
    });

    let (fetches, failed) = tally.lock().unwrap().clone();
    eprintln!("FIGURES key rotation: {fetches} fetches by the loop, {} refused", failed.len());
    assert!(fetches >= 40, "the loop ran through the rotations: {fetches} fetches");
    assert!(failed.is_empty(), "no fetch is refused during a rotation: {failed:?}");
    // The agents' own fetches, every second through both rotations.
    let unauthorized_after = (unauthorized_fetches(&a.agent.metrics()), unauthorized_fetches(&b.agent.metrics()));
    assert_eq!(unauthorized_after, unauthorized_before, "no agent fetch was Unauthorized");
    for (c, peer) in [(a, &name_b), (b, &name_a)] {
        let s = c.agent.wait_condition(peer, "Ready", "True", SETTLE);
        assert_eq!(s["conditions"].as_array().unwrap().iter().filter(|c| c["status"] != "True").count(), 0, "{s}");
    }

    // The keys did change, and the old ones are refused now.
    assert_ne!(public_pem(&signing_key(&a.agent.key_path())), public_pem(&a_key_before));
    assert_ne!(public_pem(&signing_key(&b.agent.key_path())), public_pem(&b_key_before));
    assert_eq!(fetch_private(&b_key_before, b, a), Ok(401), "A refuses B's dropped key");
    assert_eq!(fetch_private(&a_key_before, a, b), Ok(401), "B refuses A's dropped key");
    assert_eq!(fetch_private(&signing_key(&b.agent.key_path()), b, a), Ok(200));

    // Out of turn, the command refuses and says what to run.
    let out = std::process::Command::new(multicloud_e2e::paths::agent())
        .args(["rotate-key", "promote", "--key"])
        .arg(a.agent.key_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `rotate-key stage` first"), "{}", String::from_utf8_lossy(&out.stderr));
}
