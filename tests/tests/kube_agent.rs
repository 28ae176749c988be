//! Tier: real Kubernetes. The agent in Kubernetes mode against real API servers (etcd +
//! kube-apiserver per simulated cluster, tests/src/kube.rs), installed with
//! `multicloud-agent install` and run with deploy/'s ServiceAccount token, so
//! deploy/'s RBAC, server-side apply field ownership, the status
//! subresource, the CRD's schema, watch semantics and the Lease are the real
//! ones. Gateways are the test bed's Envoys with the built filter, fed by the
//! agent; the API proxy forwards to the peer's real API server.
//!
//! Clusters: 122+123 (join, faults), 124+120 (Lease, followers), 125 (least privilege,
//! key Secret, WasmPlugin). What no controller here writes (the root
//! ConfigMap, the gateway's load-balancer address, EndpointSlices) the test
//! bed writes as admin (tests/src/kube_mesh.rs).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::agent::Agent;
use multicloud_e2e::kube::ControlPlane;
use multicloud_e2e::kube_mesh::{self, api_host, object_name, start_kube_mesh, KubeMeshOptions};
use multicloud_e2e::{hosts, paths, wait_until, SimCluster};
use std::process::Command;
use std::time::{Duration, Instant};

const JOIN: Duration = Duration::from_secs(90);

fn metric(agent: &Agent, name: &str) -> Option<f64> {
    agent
        .metrics()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
}

fn is_leader(agent: &Agent) -> bool {
    metric(agent, "multicloud_agent_leader") == Some(1.0)
}

/// `multicloud-agent ARGS` with `env`; (exit code, stdout + stderr).
fn agent_cli(args: &[&str], env: &[(&str, &std::path::Path)]) -> (i32, String) {
    let mut cmd = Command::new(paths::agent());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("multicloud-agent");
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn secret_data(cp: &ControlPlane, ns: &str, name: &str, key: &str) -> Option<String> {
    use base64::Engine as _;
    let s = cp.get_json(&["secret", name, "-n", ns])?;
    let b = s["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()
}

fn forbidden(out: &std::process::Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).to_ascii_lowercase().contains("forbidden")
}

/// The peers each see the other Ready on the API server; the CLI agrees.
#[test]
fn two_clusters_join_in_kubernetes_mode_and_survive_faults() {
    let sims = [SimCluster(122), SimCluster(123)];
    // Remote secrets get 9-second tokens, so rotation shows within the test.
    let opts = KubeMeshOptions { replicas: 1, agent_args: vec!["--api-token-ttl-seconds=9".into()], ..Default::default() };
    let mut clusters = start_kube_mesh(&sims, opts);
    let (a, b) = (&clusters[0], &clusters[1]);
    let (name_a, name_b) = (object_name(sims[0]), object_name(sims[1]));

    // 1. Ready on both sides, as `kubectl get imc` shows it.
    a.wait_imc_ready(&name_b, JOIN);
    b.wait_imc_ready(&name_a, JOIN);
    assert_eq!(a.imc_ready_column(&name_b), "True");
    assert_eq!(b.imc_ready_column(&name_a), "True");
    assert_eq!(a.imc_status(&name_b)["remoteClusterUUID"], b.uuid.as_str(), "A pinned B's kube-system UID");

    // Istio's trust and topology: A's shared mesh ConfigMap (deploy/'s, which
    // istiod reads as SHARED_MESH_CONFIG) holds B's root as a caCertificates
    // entry and B's network behind B's published gateway, written by the
    // agent's field manager.
    let want_root = b.id.root_pem();
    let nets = wait_until("A's istio-multicloud-mesh ConfigMap names B", Duration::from_secs(30), || {
        let cm = a.cp.get_json(&["configmap", "istio-multicloud-mesh", "-n", "istio-system"]).ok_or("absent")?;
        let mesh: serde_json::Value = serde_json::from_str(cm["data"]["mesh"].as_str().ok_or("no mesh key")?).map_err(|e| e.to_string())?;
        let pems: Vec<&str> = mesh["caCertificates"].as_array().into_iter().flatten().filter_map(|c| c["pem"].as_str()).collect();
        if pems.iter().map(|p| p.trim()).collect::<Vec<_>>() != [want_root.trim()] {
            return Err(format!("caCertificates {pems:?}"));
        }
        let managers = cm["metadata"]["managedFields"].to_string();
        if !managers.contains("istio-multicloud-agent") {
            return Err(format!("managers {managers}"));
        }
        serde_json::from_str::<serde_json::Value>(cm["data"]["meshNetworks"].as_str().ok_or("no meshNetworks key")?)
            .map_err(|e| e.to_string())
    });
    let net_b = format!("network-{}", b.uuid);
    assert_eq!(
        nets["networks"][&net_b],
        serde_json::json!({"endpoints": [{"fromRegistry": name_b}], "gateways": [{"address": sims[1].ip(hosts::GATEWAY).to_string(), "port": b.mesh_port}]}),
        "{nets}"
    );
    assert_eq!(nets["networks"].as_object().map(|o| o.len()), Some(1), "only B's network: {nets}");

    // The filter module reached each gateway inside its ECDS resource, as
    // deploy/'s agent args (--filter-module) send it: no file on the gateway.
    for c in [a, b] {
        let dump = c.gateway.as_ref().expect("the test bed's gateway").config_dump();
        let ecds = multicloud_e2e::dump::ecds(&dump);
        let (_, edge) = ecds.iter().find(|(n, _)| n == "multicloud-edge").expect("the edge filter's ECDS resource");
        let code = &edge["typed_config"]["config"]["vm_config"]["code"]["local"];
        assert!(code["inline_bytes"].as_str().is_some_and(|b| b.len() > 100_000), "module inline: {}", code.to_string().len());
        assert!(code.get("filename").is_none(), "no path on the gateway: {code}");
    }

    // 2. The CLI: status and check --kubernetes pass.
    for c in [a, b] {
        let (code, out) = agent_cli(&["status", "--agent", &format!("http://{}", c.agents[0].http_addr())], &[]);
        assert_eq!(code, 0, "status on cluster {}: {out}", c.sim.0);
    }
    let peer_gateway = format!("{}={}:{}", api_host(sims[1]), sims[1].ip(hosts::GATEWAY), b.tls_port);
    let (code, out) =
        agent_cli(&["check", &name_b, "--kubernetes", "--api-host-override", &peer_gateway], &[("KUBECONFIG", &a.cp.admin_kubeconfig())]);
    assert_eq!(code, 0, "check --kubernetes {name_b}:\n{out}");
    for step in ["object", "public", "private", "api", "mesh"] {
        assert!(out.lines().any(|l| l.starts_with("PASS") && l.split_whitespace().nth(1) == Some(step)), "{step} must PASS:\n{out}");
    }

    // 3. Status by server-side apply under the agent's field manager, on the
    //    status subresource; another manager's fields survive.
    let obj = a.cp.get_json(&["imc", &name_b]).unwrap();
    let managers = obj["metadata"]["managedFields"].as_array().unwrap().clone();
    assert!(
        managers.iter().any(|m| m["manager"] == "istio-multicloud-agent" && m["operation"] == "Apply" && m["subresource"] == "status"),
        "{managers:#?}"
    );
    a.cp.kubectl_ok(&["label", "imc", &name_b, "team=platform", "--field-manager=someone-else"]);
    let before = metric(&a.agents[0], "multicloud_agent_status_writes_total").unwrap();

    // 4. A foreign manager rewrites the status: corrected, and the agent lives on.
    let forged = r#"{"apiVersion":"istio-multicloud.dev/v1alpha1","kind":"IstioMulticloud","metadata":{"name":"NAME"},"status":{"conditions":[{"type":"Ready","status":"False","reason":"Forged","message":"not by the agent","lastTransitionTime":"2020-01-01T00:00:00Z"}]}}"#
        .replace("NAME", &name_b);
    let out = a.cp.kubectl_as(
        &a.cp.admin_kubeconfig(),
        &["apply", "--server-side", "--subresource=status", "--field-manager=intruder", "--force-conflicts", "-f", "-"],
        Some(&forged),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.wait_imc_ready(&name_b, Duration::from_secs(30));
    let st = a.imc_status(&name_b);
    assert!(!st.to_string().contains("Forged"), "the forged condition is gone: {st}");
    assert!(metric(&a.agents[0], "multicloud_agent_status_writes_total").unwrap() > before, "the agent wrote its own status again");
    assert!(a.agents[0].get("/healthz").is_ok(), "the agent is still running");
    let labels = &a.cp.get_json(&["imc", &name_b]).unwrap()["metadata"]["labels"];
    assert_eq!(labels["team"], "platform", "another manager's label survived the agent's status writes");

    // 5. The Istio remote secret: written, a working kubeconfig to B's API
    //    proxy (B's gateway, B's real API server behind it), rotated.
    let secret = format!("istio-remote-secret-{name_b}");
    let s = wait_until("A's remote secret for B", Duration::from_secs(30), || {
        a.cp.get_json(&["secret", &secret, "-n", "istio-system"]).ok_or_else(|| "absent".to_string())
    });
    assert_eq!(s["metadata"]["labels"]["istio/multiCluster"], "true");
    let key = s["data"].as_object().unwrap().keys().next().unwrap().clone();
    let kubeconfig_text = secret_data(a.cp, "istio-system", &secret, &key).unwrap();
    let kc = a.dir().join("remote.kubeconfig");
    std::fs::write(&kc, &kubeconfig_text).unwrap();
    let read = b.cp.kubectl_as(&kc, &["get", "services", "-A", "-o", "name"], None);
    assert!(read.status.success(), "a read through B's API proxy: {}", String::from_utf8_lossy(&read.stderr));
    assert!(String::from_utf8_lossy(&read.stdout).contains("service/foo"), "B's services, from B's API server");
    // Secrets: a list passes but is empty (the guard sends it to the empty
    // namespace), though B's istio-system holds Secrets; one by name is refused.
    let secrets = b.cp.kubectl_as(&kc, &["get", "secrets", "-n", "istio-system", "-o", "name"], None);
    assert!(secrets.status.success(), "a Secret list through B's API proxy: {}", String::from_utf8_lossy(&secrets.stderr));
    assert!(String::from_utf8_lossy(&secrets.stdout).trim().is_empty(), "and empty: {}", String::from_utf8_lossy(&secrets.stdout));
    assert!(!b.cp.kubectl_ok(&["get", "secrets", "-n", "istio-system", "-o", "name"]).trim().is_empty(), "B's istio-system holds Secrets");
    let by_name = b.cp.kubectl_as(&kc, &["get", "secret", "istio-multicloud-federation-key", "-n", "istio-system"], None);
    assert!(!by_name.status.success(), "a Secret by name through B's API proxy is refused");
    let rotated = wait_until("the remote secret's token to rotate", Duration::from_secs(30), || {
        let now = secret_data(a.cp, "istio-system", &secret, &key).unwrap_or_default();
        if now != kubeconfig_text && !now.is_empty() {
            Ok(now)
        } else {
            Err("same token".into())
        }
    });
    std::fs::write(&kc, &rotated).unwrap();
    let read = b.cp.kubectl_as(&kc, &["get", "services", "-n", "abc", "-o", "name"], None);
    assert!(read.status.success(), "the rotated token works: {}", String::from_utf8_lossy(&read.stderr));

    // 5b. A federation key rotation with the operator's command on the key
    //     Secret (`rotate-key --kubernetes`, the admin's credentials): the
    //     Lease holder's watch of the Secret (deploy/'s RBAC) takes each
    //     step; B learns each key from A's public document; A's fetches of
    //     B never fail; `promote` re-issues the remote secret's token with
    //     the new key.
    let admin = a.cp.admin_kubeconfig();
    let rotate = |step: &str| {
        let (code, out) = agent_cli(
            &["rotate-key", step, "--kubernetes", "--namespace", "istio-system", "--min-wait-seconds", "0"],
            &[("KUBECONFIG", &admin)],
        );
        assert_eq!(code, 0, "rotate-key {step}: {out}");
    };
    let public_of = |pem: &str| {
        multicloud_core::pem::ed25519_public_key_to_pem(&multicloud_core::pem::ed25519_signing_key_from_pem(pem).unwrap().verifying_key())
    };
    let key_secret = |k: &str| secret_data(a.cp, "istio-system", "istio-multicloud-federation-key", k);
    let b_sees = |current: &str, additional: &[String], what: &str| {
        wait_until(what, Duration::from_secs(30), || {
            let doc = b.imc_status(&name_a)["metadataCache"]["public"]["document"].clone();
            if multicloud_e2e::fixtures::published_keys(&doc) == (current.to_string(), additional.to_vec()) {
                Ok(())
            } else {
                Err(doc.to_string())
            }
        })
    };
    let b_gateway_has = |pem: &str, present: bool, what: &str| {
        let line = pem.lines().find(|l| !l.starts_with("-----")).unwrap().to_string();
        wait_until(what, Duration::from_secs(30), || {
            let dump = b.gateway.as_ref().unwrap().config_dump().to_string();
            if dump.contains(&line) == present {
                Ok(())
            } else {
                Err(format!("present: {}", !present))
            }
        })
    };
    let unauthorized = || {
        a.agents[0]
            .metrics()
            .lines()
            .filter(|l| l.starts_with("multicloud_agent_fetch_total{") && l.contains("result=\"unauthorized\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let unauthorized_before = unauthorized();
    let old = public_of(&key_secret("private.pem").unwrap());
    rotate("stage");
    let next = public_of(&key_secret("next.pem").expect("the staged key in the Secret"));
    b_sees(&old, std::slice::from_ref(&next), "B to read A's staged key beside its signing key");
    b_gateway_has(&next, true, "B's gateway to take tokens of A's staged key");
    rotate("promote");
    assert_eq!(public_of(&key_secret("previous.pem").expect("the previous key in the Secret")), old);
    b_sees(&next, std::slice::from_ref(&old), "B to read A's promoted key, the old one still published");
    let signed_by_next = wait_until("the remote secret's token re-issued with the promoted key", Duration::from_secs(30), || {
        let text = secret_data(a.cp, "istio-system", &secret, &key).unwrap_or_default();
        std::fs::write(&kc, &text).map_err(|e| e.to_string())?;
        let out = b.cp.kubectl_as(&kc, &["config", "view", "--raw", "-o", "jsonpath={.users[0].user.token}"], None);
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let vk = multicloud_core::pem::ed25519_public_key_from_pem(&next).unwrap();
        multicloud_core::token::verify(&token, &b.uuid, multicloud_e2e::fixtures::unix_now(), i64::MAX, |_| Some(((), [vk])))
            .map(|_| text)
            .map_err(|e| format!("{e:?}"))
    });
    std::fs::write(&kc, &signed_by_next).unwrap();
    let read = b.cp.kubectl_as(&kc, &["get", "services", "-n", "abc", "-o", "name"], None);
    assert!(read.status.success(), "the re-issued token works: {}", String::from_utf8_lossy(&read.stderr));
    rotate("finish");
    assert!(key_secret("previous.pem").is_none() && key_secret("next.pem").is_none());
    b_sees(&next, &[], "B to read A's rotation finished");
    b_gateway_has(&old, false, "B's gateway to drop A's old key");
    assert_eq!(unauthorized(), unauthorized_before, "no fetch of A's was Unauthorized during the rotation");
    a.wait_imc_ready(&name_b, Duration::from_secs(30));
    b.wait_imc_ready(&name_a, Duration::from_secs(30));
    let (code, out) = agent_cli(&["rotate-key", "finish", "--kubernetes", "--namespace", "istio-system"], &[("KUBECONFIG", &admin)]);
    assert!(code != 0 && out.contains("no rotation is under way"), "out of turn: {out}");

    // 6. The API server restarts mid-run: the agent reconnects, keeps its
    //    state, loses no object, and sees what changes afterwards.
    let objects_before = a.cp.kubectl_ok(&["get", "imc,secrets,leases", "-A", "-o", "name"]);
    a.cp.restart_apiserver();
    assert_eq!(a.imc_ready_column(&name_b), "True", "kept across the restart");
    b.wait_imc_ready(&name_a, Duration::from_secs(30));
    let objects_after = a.cp.kubectl_ok(&["get", "imc,secrets,leases", "-A", "-o", "name"]);
    for o in objects_before.lines() {
        assert!(objects_after.contains(o), "{o} lost across the API server's restart");
    }
    kube_mesh::link(a.cp, &[(SimCluster(129), 9, "not a pem".into())]);
    wait_until("the agent to see an object created after the restart", Duration::from_secs(60), || {
        let st = a.imc_status(&object_name(SimCluster(129)));
        if st["conditions"].as_array().is_some_and(|c| !c.is_empty()) {
            Ok(())
        } else {
            Err(st.to_string())
        }
    });
    a.cp.kubectl_ok(&["delete", "imc", &object_name(SimCluster(129))]);

    // 7. The key Secret deleted while running: as the operator guide says,
    //    the agent keeps signing with the key it loaded; a restart creates a
    //    new one, and the peer recovers by itself.
    let key_before = secret_data(a.cp, "istio-system", "istio-multicloud-federation-key", "private.pem").expect("the key Secret");
    a.cp.kubectl_ok(&["delete", "secret", "istio-multicloud-federation-key", "-n", "istio-system"]);
    b.wait_imc_ready(&name_a, Duration::from_secs(30));
    assert_eq!(a.imc_ready_column(&name_b), "True");
    assert!(a.cp.get_json(&["secret", "istio-multicloud-federation-key", "-n", "istio-system"]).is_none(), "not re-created while running");
    let st = clusters[0].agents[0].terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "the agent exits cleanly on SIGTERM: {st:?}");
    // The pod comes back (same node, same xDS port the gateway dials).
    clusters[0].agents[0].restart();
    let key_after = wait_until("a new key Secret", Duration::from_secs(30), || {
        secret_data(clusters[0].cp, "istio-system", "istio-multicloud-federation-key", "private.pem").ok_or_else(|| "absent".to_string())
    });
    assert_ne!(key_before, key_after, "a new key");
    clusters[1].wait_imc_ready(&name_a, JOIN);
    let (a, b) = (&clusters[0], &clusters[1]);
    a.wait_imc_ready(&name_b, JOIN);

    // 8. Unlink: the remote secret goes with the object.
    a.cp.kubectl_ok(&["delete", "imc", &name_b]);
    wait_until("the remote secret to be deleted", Duration::from_secs(30), || {
        match a.cp.get_json(&["secret", &secret, "-n", "istio-system"]) {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    });
    // ... and B's root and network leave Istio's shared mesh config.
    wait_until("B's root and network to leave A's mesh ConfigMap", Duration::from_secs(30), || {
        let cm = a.cp.get_json(&["configmap", "istio-multicloud-mesh", "-n", "istio-system"]).ok_or("absent")?;
        let (mesh, nets) = (cm["data"]["mesh"].as_str().unwrap_or(""), cm["data"]["meshNetworks"].as_str().unwrap_or(""));
        let mesh: serde_json::Value = serde_json::from_str(mesh).map_err(|e| e.to_string())?;
        let nets: serde_json::Value = serde_json::from_str(nets).map_err(|e| e.to_string())?;
        if mesh == serde_json::json!({"caCertificates": []}) && nets == serde_json::json!({"networks": {}}) {
            Ok(())
        } else {
            Err(format!("{mesh} {nets}"))
        }
    });
    let _ = b;
}

/// Three replicas (DaemonSet pods), a peer: only the Lease holder reads the
/// facts, fetches from the peer and writes (status, the remote secret, the
/// data plane state); the followers serve their node from the published
/// state and make no request beyond their two watches (the API server's
/// audit log, by each replica's User-Agent). SIGTERM hands the Lease over
/// at once (well before it would expire); after SIGKILL a standby takes it
/// within the Lease's duration and rewrites what the old holder owned
/// without waiting for a change (a new remote-secret token, the state,
/// Istio's mesh ConfigMap), then follows a change.
#[test]
fn only_the_lease_holder_reads_fetches_and_writes_and_another_replica_takes_over() {
    let sims = [SimCluster(124), SimCluster(120)];
    let mut clusters = start_kube_mesh(&sims, KubeMeshOptions { replicas: 3, ..Default::default() });
    let peer = object_name(sims[1]);
    let (c, b) = {
        let (x, y) = clusters.split_at_mut(1);
        (&mut x[0], &y[0])
    };
    c.wait_imc_ready(&peer, JOIN);
    b.wait_imc_ready(&object_name(sims[0]), JOIN);
    let n = c.agents.len();
    let holder = wait_until("one replica to hold the Lease", Duration::from_secs(60), || {
        let leaders: Vec<usize> = (0..n).filter(|i| is_leader(&c.agents[*i])).collect();
        match leaders.as_slice() {
            [i] => Ok(*i),
            other => Err(format!("{other:?}")),
        }
    });
    let followers: Vec<usize> = (0..n).filter(|i| *i != holder).collect();
    let lease = c.cp.get_json(&["lease", "istio-multicloud-agent", "-n", "istio-system"]).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], format!("agent-{holder}"));
    assert!(metric(&c.agents[holder], "multicloud_agent_status_writes_total").unwrap() >= 1.0);
    assert!(metric(&c.agents[holder], "multicloud_agent_state_writes_total").unwrap() >= 1.0, "the holder published the state");
    let fetched = |a: &Agent| a.metrics().lines().filter(|l| l.starts_with("multicloud_agent_fetch_total{")).count();
    assert!(fetched(&c.agents[holder]) > 0, "the holder fetches from the peer");
    for f in &followers {
        let a = &c.agents[*f];
        assert_eq!(metric(a, "multicloud_agent_status_writes_total"), Some(0.0), "follower agent-{f} never wrote status");
        assert_eq!(metric(a, "multicloud_agent_state_writes_total"), Some(0.0), "follower agent-{f} never wrote the state");
        assert_eq!(fetched(a), 0, "follower agent-{f} never fetched from the peer: {}", a.metrics());
        // It serves its node from the holder's state: ready, and its
        // filter configuration (its ECDS file) names the peer's key.
        wait_until(&format!("follower agent-{f} to serve the published state"), JOIN, || {
            let ready = a.get("/readyz").map(|r| r.status) == Ok(200);
            let ecds = std::fs::read(c.dir().join(format!("edge-agent-{f}.pb"))).unwrap_or_default();
            let peer_uuid = b.uuid.as_bytes();
            if ready && ecds.windows(peer_uuid.len()).any(|w| w == peer_uuid) {
                Ok(())
            } else {
                Err(format!("ready {ready}, ECDS {} bytes", ecds.len()))
            }
        });
    }

    // Steady state: over five of the holder's refreshes of the peer, the
    // followers sent the API server nothing (their watches stay open), and
    // the holder what it needs.
    let by_agent = |cp: &ControlPlane| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(cp.dir().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == "system:serviceaccount:istio-system:istio-multicloud-agent")
            .collect()
    };
    let of = |events: &[serde_json::Value], replica: usize| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.ends_with(&format!("(agent-{replica})"))))
            .map(|e| format!("{} {}", e["verb"].as_str().unwrap_or(""), e["requestURI"].as_str().unwrap_or("")))
            .collect()
    };
    let before = by_agent(c.cp);
    let fetches = |a: &Agent| -> f64 {
        a.metrics()
            .lines()
            .filter(|l| l.starts_with("multicloud_agent_fetch_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let f0 = fetches(&c.agents[holder]);
    let t_window = Instant::now();
    wait_until("five of the holder's refreshes", Duration::from_secs(60), || {
        if fetches(&c.agents[holder]) >= f0 + 10.0 {
            Ok(())
        } else {
            Err(format!("{} fetches", fetches(&c.agents[holder])))
        }
    });
    let window = t_window.elapsed();
    let after = by_agent(c.cp);
    let new = &after[before.len().min(after.len())..];
    for f in &followers {
        let sent = of(new, *f);
        assert!(sent.is_empty(), "follower agent-{f} made requests in the steady state: {sent:?}");
        let all = of(&after, *f);
        assert!(
            all.iter().all(|r| r.starts_with("watch ") || r.starts_with("list ") || r.contains("/leases/istio-multicloud-agent")),
            "follower agent-{f} made only its watches (and its one Lease read at start): {all:?}"
        );
    }
    let holder_sent = of(new, holder);
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for r in &holder_sent {
        let (verb, uri) = r.split_once(' ').unwrap_or((r, ""));
        let path = uri.split('?').next().unwrap_or(uri);
        *by_kind.entry(format!("{verb} {path}")).or_default() += 1;
    }
    eprintln!("FIGURES steady state over {window:?}: followers 0 requests; the holder {} ({by_kind:?})", holder_sent.len());

    // SIGTERM: the holder releases the Lease on its way out.
    let t = Instant::now();
    let st = c.agents[holder].terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "exits cleanly on SIGTERM: {st:?}");
    // Well inside the Lease's 15 s: a follower did not wait for it to expire.
    let next = wait_until("a follower to take over after SIGTERM", Duration::from_secs(10), || {
        followers.iter().copied().find(|f| is_leader(&c.agents[*f])).ok_or_else(|| "not yet".to_string())
    });
    let after_term = t.elapsed();
    let lease = c.cp.get_json(&["lease", "istio-multicloud-agent", "-n", "istio-system"]).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], format!("agent-{next}"));
    eprintln!("FIGURES takeover after SIGTERM: {after_term:?}");

    // SIGKILL: nothing is released; the Lease lapses (15 s) and a follower
    // takes it, then writes at once, with no change to wait for: the
    // remote secret gets a fresh token, the state is published.
    let secret = format!("istio-remote-secret-{peer}");
    let token = || secret_data(c.cp, "istio-system", &secret, &peer).unwrap_or_default();
    let old_token = token();
    assert!(!old_token.is_empty(), "the remote secret is there");
    c.agents[holder] = c.start_replica("agent-3");
    let t = Instant::now();
    c.agents[next].kill();
    let standby = wait_until("a replica to take over after SIGKILL", Duration::from_secs(30), || {
        (0..n).filter(|i| *i != next).find(|i| is_leader(&c.agents[*i])).ok_or_else(|| "not yet".to_string())
    });
    let t_take = t.elapsed();
    wait_until("the new holder to write what the old one owned", Duration::from_secs(30), || {
        let wrote = metric(&c.agents[standby], "multicloud_agent_state_writes_total").unwrap_or(0.0) >= 1.0
            && metric(&c.agents[standby], "multicloud_agent_status_writes_total").unwrap_or(0.0) >= 1.0;
        if wrote && token() != old_token {
            Ok(())
        } else {
            Err(format!("state/status written {wrote}, token replaced {}", token() != old_token))
        }
    });
    eprintln!("FIGURES takeover after SIGKILL: Lease {t_take:?}, first writes {:?}", t.elapsed());
    // Istio's shared mesh config too: the new holder applies it (its field
    // manager's apply is a no-op on the server when nothing changed, so the
    // audit log, not the object, shows it).
    wait_until("the new holder to apply the mesh ConfigMap", Duration::from_secs(30), || {
        let sent = of(&by_agent(c.cp), standby);
        if sent.iter().any(|r| r.starts_with("patch ") && r.contains("/configmaps/istio-multicloud-mesh")) {
            Ok(())
        } else {
            Err(format!("{} requests from agent-{standby}, none a patch of istio-multicloud-mesh", sent.len()))
        }
    });
    // And it follows a change.
    let before = metric(&c.agents[standby], "multicloud_agent_status_writes_total").unwrap_or(0.0);
    kube_mesh::link(c.cp, &[(SimCluster(128), 9, "not a pem".into())]);
    let other = object_name(SimCluster(128));
    wait_until("the new holder to write the new object's status", Duration::from_secs(30), || {
        let w = metric(&c.agents[standby], "multicloud_agent_status_writes_total").unwrap_or(0.0);
        if w > before && c.imc_status(&other)["conditions"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(())
        } else {
            Err(format!("writes {w}"))
        }
    });
}

/// deploy/'s identity can do what the agent needs and nothing else: the key
/// Secret created once and reused, the WasmPlugin's `pluginConfig` written,
/// and 403 for other Secrets, Services, and deleting the key.
#[test]
fn least_privilege_key_secret_and_wasmplugin_with_deploys_identity() {
    let sim = SimCluster(125);
    let opts = KubeMeshOptions { replicas: 1, install_args: vec!["--wasmplugin".into()], ..Default::default() };
    let mut c = start_kube_mesh(&[sim], opts).pop().unwrap();
    let cp = c.cp;
    let kc = c.agent_kubeconfig.clone();

    // The key Secret: created by the first replica, reused by the next.
    let secret = cp.get_json(&["secret", "istio-multicloud-federation-key", "-n", "istio-system"]).expect("created on first start");
    let rv = secret["metadata"]["resourceVersion"].clone();
    let second = c.start_replica("agent-1");
    let again = cp.get_json(&["secret", "istio-multicloud-federation-key", "-n", "istio-system"]).unwrap();
    assert_eq!(again["metadata"]["resourceVersion"], rv, "the second replica reused the key Secret");
    c.agents.push(second);

    // The WasmPlugin (deploy/'s wasmplugin variant): the holder writes the
    // edge configuration into spec.pluginConfig, under its field manager.
    let plugin = wait_until("the WasmPlugin's pluginConfig", Duration::from_secs(60), || {
        let w = cp.get_json(&["wasmplugin", "multicloud-edge", "-n", "istio-system"]).ok_or("no WasmPlugin")?;
        if w["spec"]["pluginConfig"].to_string().contains(&c.uuid) {
            Ok(w)
        } else {
            Err(w["spec"].to_string())
        }
    });
    let managers = plugin["metadata"]["managedFields"].to_string();
    assert!(managers.contains("istio-multicloud-agent"), "{managers}");
    assert!(plugin["spec"]["url"].as_str().is_some_and(|u| !u.is_empty()), "the operator's url is kept");

    // Refused (403) for what it must not do.
    cp.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: unrelated, namespace: istio-system}\nstringData: {password: hunter2}\n")
        .unwrap();
    let refused: &[(&str, &[&str])] = &[
        ("read another Secret", &["get", "secret", "unrelated", "-n", "istio-system"]),
        ("list Secrets", &["get", "secrets", "-n", "istio-system"]),
        ("read Secrets in kube-system", &["get", "secrets", "-n", "kube-system"]),
        ("delete the key Secret (an operator's step)", &["delete", "secret", "istio-multicloud-federation-key", "-n", "istio-system"]),
        ("create a Service", &["create", "service", "clusterip", "intruder", "--tcp=80:80", "-n", "istio-system"]),
        ("patch a Service", &["label", "service", "istio-ingressgateway", "-n", "istio-system", "x=y"]),
        ("write an IstioMulticloud's spec", &["label", "imc", "--all", "x=y"]),
        ("create a Pod", &["run", "intruder", "--image=busybox", "-n", "istio-system"]),
    ];
    // The last one needs an object to label.
    kube_mesh::link(cp, &[(SimCluster(127), 9, "not a pem".into())]);
    // The API server loads admission policies asynchronously: wait until a
    // server-side dry run (which passes admission) of the key's deletion is refused.
    wait_until("deploy/'s ValidatingAdmissionPolicy to be in force", Duration::from_secs(30), || {
        let out =
            cp.kubectl_as(&kc, &["delete", "secret", "istio-multicloud-federation-key", "-n", "istio-system", "--dry-run=server"], None);
        if forbidden(&out) {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    for (what, args) in refused {
        let out = cp.kubectl_as(&kc, args, None);
        assert!(forbidden(&out), "deploy/'s agent identity may not {what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // And allowed what it needs (the same identity, for contrast).
    for args in [&["get", "imc"][..], &["get", "lease", "istio-multicloud-agent", "-n", "istio-system"]] {
        let out = cp.kubectl_as(&kc, args, None);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
