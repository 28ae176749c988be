//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The metadata exchange end to end: two simulated clusters, each with a
//! real gateway Envoy running the filter and the real agent in standalone
//! mode; each holds an IstioMulticloud object for the other. Metadata is
//! fetched over TLS (rustls, pinned edge CA) through the other's filter.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::mesh::{start_full_mesh, Cluster};
use multicloud_e2e::{http, wait_until, SimCluster};
use std::time::Duration;

const READY: Duration = Duration::from_secs(40);

#[test]
fn two_clusters_join_and_survive_a_gateway_outage() {
    let mut cs = start_full_mesh(&[SimCluster(21), SimCluster(22)]);
    let (a_name, b_name) = (Cluster::object_name(cs[0].sim), Cluster::object_name(cs[1].sim));

    // 1. Both objects reach Ready; each cache holds the other's real documents.
    let a_sees_b = cs[0].agent.wait_condition(&b_name, "Ready", "True", READY);
    let b_sees_a = cs[1].agent.wait_condition(&a_name, "Ready", "True", READY);
    for (status, other) in [(&a_sees_b, &cs[1]), (&b_sees_a, &cs[0])] {
        let served = http::get(&other.gateway_url("/metadata/public/public.json")).json();
        let cache = &status["metadataCache"];
        assert_eq!(cache["public"]["document"], served, "the cache holds what the remote's filter serves");
        assert_eq!(cache["public"]["document"]["clusterUUID"], other.id.uuid);
        assert_eq!(cache["public"]["document"]["rootCA"], other.id.root_pem());
        assert_eq!(status["remoteClusterUUID"], other.id.uuid);
        let private = &cache["private"]["document"];
        assert_eq!(private["networkName"], format!("network-{}", other.sim.0));
        assert_eq!(private["services"][0]["hostname"], "foo.abc.svc.cluster.local");
        assert!(cache["public"]["fetchedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
        for c in status["conditions"].as_array().unwrap() {
            assert_eq!(c["status"], "True", "{c}");
            assert!(c["lastTransitionTime"].is_string() && c["observedGeneration"] == 1, "{c}");
        }
    }
    // The agent's key is what the gateway publishes.
    let pub_a = http::get(&cs[0].gateway_url("/metadata/public/public.json")).json();
    let key = multicloud_core::pem::ed25519_signing_key_from_pem(&std::fs::read_to_string(cs[0].agent.key_path()).unwrap()).unwrap();
    assert_eq!(pub_a["authnKeyPub"], multicloud_core::pem::ed25519_public_key_to_pem(&key.verifying_key()));
    assert!(cs[0]
        .agent
        .metrics()
        .contains(&format!("multicloud_agent_fetch_total{{peer=\"{b_name}\",document=\"private\",result=\"ok\"}}")));

    // 2. B's gateway stops: A's conditions turn False with a reason, the cache stays.
    let before = a_sees_b["metadataCache"].clone();
    cs[1].gateway.kill();
    let down = cs[0].agent.wait_reason(&b_name, "Ready", "False", "ConnectFailed", READY);
    let ready = down["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["reason"], "ConnectFailed", "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("last good copy"), "{ready}");
    // The documents are the ones fetched before the outage (A may have
    // refreshed once more between the snapshot and the kill, which moves
    // only fetchedAt)...
    for doc in ["public", "private"] {
        assert_eq!(down["metadataCache"][doc]["document"], before[doc]["document"], "the last good {doc} document is kept");
    }
    // ... and failed fetches leave the cache exactly as it was.
    let failed = |m: &str| {
        let prefix = format!("multicloud_agent_fetch_total{{peer=\"{b_name}\",document=\"public\",result=\"connect_failed\"}} ");
        m.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let failed_once = failed(&cs[0].agent.metrics());
    wait_until("another failed fetch of B", READY, || {
        let n = failed(&cs[0].agent.metrics());
        if n > failed_once {
            Ok(())
        } else {
            Err(format!("{n} failed fetches"))
        }
    });
    let cache = cs[0].agent.status()["objects"][&b_name]["metadataCache"].clone();
    assert_eq!(cache, down["metadataCache"], "the last good metadata is kept as it was, fetchedAt included");
    assert!(cs[0].agent.metrics().contains(&format!("multicloud_agent_peer_ready{{peer=\"{b_name}\"}} 0")));
    // A's own gateway still serves, and still accepts B as a peer (last known good).
    assert_eq!(http::get(&cs[0].gateway_url("/metadata/public/public.json")).status, 200);

    // B comes back on the same address: A recovers by itself.
    cs[1].gateway.restart();
    let again = cs[0].agent.wait_condition(&b_name, "Ready", "True", READY);
    wait_until("a fresh fetch after the outage", READY, || {
        let s = cs[0].agent.status()["objects"][&b_name].clone();
        if s["metadataCache"]["public"]["fetchedAt"] != before["public"]["fetchedAt"] {
            Ok(())
        } else {
            Err(format!("{}", s["metadataCache"]["public"]["fetchedAt"]))
        }
    });
    assert_eq!(again["remoteClusterUUID"], cs[1].id.uuid);
}
