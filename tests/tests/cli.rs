//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! `multicloud-agent status` and `multicloud-agent check`, the real binary
//! against two simulated clusters (127.0.81.x and 127.0.82.x) with real
//! agents and gateways.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::metadata::MeshMode;
use multicloud_e2e::mesh::{api_host, start_mesh, ApiOptions, Cluster, MeshOptions, TrafficOptions};
use multicloud_e2e::{hosts, paths, wait_until, SimCluster};
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const READY: Duration = Duration::from_secs(40);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the agent binary with `args`, killed after 60 s.
fn run(args: &[&str]) -> Out {
    let mut child = Command::new(paths::agent())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multicloud-agent");
    let status = wait_until(&format!("multicloud-agent {args:?} to exit"), Duration::from_secs(60), || {
        child.try_wait().map_err(|e| e.to_string())?.ok_or_else(|| "still running".to_string())
    });
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    eprintln!("$ multicloud-agent {}\n{stdout}{stderr}(exit {:?})", args.join(" "), status.code());
    Out { code: status.code().unwrap_or(-1), stdout, stderr }
}

fn agent_url(c: &Cluster) -> String {
    format!("http://{}", c.agent.http_addr())
}

fn check_args(c: &Cluster, peer: &Cluster, key: &str) -> Vec<String> {
    vec![
        "check".into(),
        Cluster::object_name(peer.sim),
        "--standalone".into(),
        c.agent.dir().join("standalone.yaml").display().to_string(),
        "--key".into(),
        key.into(),
        "--api-host-override".into(),
        format!("{}={}:{}", api_host(peer.sim), peer.sim.ip(hosts::GATEWAY), peer.tls_port),
    ]
}

fn step<'a>(steps: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    steps.as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no step {name}: {steps}"))
}

#[test]
fn status_and_check_against_a_two_cluster_mesh() {
    let mut cs = start_mesh(
        &[SimCluster(81), SimCluster(82)],
        MeshOptions {
            ads: Some(true),
            api: Some(ApiOptions { token_ttl_seconds: 3600 }),
            traffic: Some(TrafficOptions {
                mode: MeshMode::IdentityEnforcing,
                sameness: multicloud_proto::traffic::Sameness::Balanced,
                foo_in: &[true, true],
                local_route: false,
                one_request_per_connection: false,
            }),
            ..Default::default()
        },
    );
    let (a_name, b_name) = (Cluster::object_name(cs[0].sim), Cluster::object_name(cs[1].sim));
    cs[0].agent.wait_condition(&b_name, "Ready", "True", READY);
    cs[1].agent.wait_condition(&a_name, "Ready", "True", READY);

    // status on a healthy mesh: exit 0, the row Ready, the fingerprint of the peer's root.
    for (me, peer, peer_name) in [(&cs[0], &cs[1], &b_name), (&cs[1], &cs[0], &a_name)] {
        let out = run(&["status", "--agent", &agent_url(me)]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let fp = multicloud_agent::cli::status::root_fingerprint(&peer.id.root_pem()).unwrap();
        let row = out.stdout.lines().find(|l| l.starts_with(peer_name.as_str())).unwrap_or_else(|| panic!("{}", out.stdout));
        assert!(row.contains(&fp) && row.contains(&peer.id.uuid) && row.contains("True"), "{row}");
        let json = run(&["status", "--agent", &agent_url(me), "-o", "json"]);
        assert_eq!(json.code, 0);
        let rows: serde_json::Value = serde_json::from_str(&json.stdout).expect("-o json parses");
        assert_eq!(rows[0]["name"], *peer_name);
        assert_eq!(rows[0]["ready"], "True");
        assert_eq!(rows[0]["rootFingerprint"], fp);
        assert_eq!(rows[0]["remoteClusterUUID"], peer.id.uuid);
        assert_eq!(rows[0]["endpoints"], 1);
    }

    // A dead agent address: exit 2, the message names the URL.
    let dead = format!("http://{}:{}", cs[0].sim.ip(hosts::AGENT), multicloud_e2e::fixtures::free_port(cs[0].sim.ip(hosts::AGENT)));
    let out = run(&["status", "--agent", &dead]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains(&dead), "{}", out.stderr);

    // check on a healthy peer: every step passes, the mesh port's handshake included.
    let key = cs[0].agent.key_path().display().to_string();
    let args = check_args(&cs[0], &cs[1], &key);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("PASS  public") && out.stdout.contains("PASS  private"), "{}", out.stdout);
    let mut jargs = args.clone();
    jargs.extend(["-o".into(), "json".into()]);
    let steps: serde_json::Value = serde_json::from_str(&run(&jargs.iter().map(String::as_str).collect::<Vec<_>>()).stdout).unwrap();
    for s in ["object", "public", "private", "mesh"] {
        assert_eq!(step(&steps, s)["result"], "PASS", "{steps}");
    }
    assert_ne!(step(&steps, "api")["result"], "FAIL", "{steps}");

    // A key the peer does not know: the private step fails with the peer's reason.
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.key").display().to_string();
    assert_eq!(run(&["keygen", "--key", &fresh]).code, 0);
    let args = check_args(&cs[0], &cs[1], &fresh);
    let mut jargs = args.clone();
    jargs.extend(["-o".into(), "json".into()]);
    let out = run(&jargs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.code, 1);
    let steps: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(step(&steps, "public")["result"], "PASS");
    let private = step(&steps, "private");
    assert_eq!(private["result"], "FAIL", "{steps}");
    assert!(private["detail"].as_str().unwrap().contains("TokenBadSignature"), "{private}");
    assert!(private["hint"].is_string());

    // B's gateway stops: status exits 1 with the reason; check fails the public step with a hint.
    cs[1].gateway.kill();
    cs[0].agent.wait_reason(&b_name, "Ready", "False", "ConnectFailed", READY);
    let out = run(&["status", "--agent", &agent_url(&cs[0])]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let row = out.stdout.lines().find(|l| l.starts_with(b_name.as_str())).unwrap();
    assert!(row.contains("False") && row.contains("ConnectFailed"), "{row}");
    let out = run(&check_args(&cs[0], &cs[1], &key).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("FAIL  public") && out.stdout.contains("ConnectFailed") && out.stdout.contains("what to do"),
        "{}",
        out.stdout
    );
}
