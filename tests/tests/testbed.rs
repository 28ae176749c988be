//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The test bed's own promises: Envoys become ready on their cluster's
//! loopback range, and never outlive the test that started them, not even
//! when the test process is killed.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::envoy::{Envoy, EnvoySpec};
use multicloud_e2e::fixtures::dp;
use multicloud_e2e::{wait_until, SimCluster};
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
use multicloud_proto::envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
use multicloud_proto::envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponse;
use multicloud_proto::envoy_types::util::pack_any;
use std::net::SocketAddr;
use std::time::Duration;

fn minimal(cluster: SimCluster) -> EnvoySpec {
    let answer = Filter {
        name: "envoy.filters.network.direct_response".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(DirectResponse::default()))),
    };
    let l = dp::listener("l", SocketAddr::from((cluster.ip(1), 0)), vec![FilterChain { filters: vec![answer], ..Default::default() }]);
    let typed = Bootstrap { static_resources: Some(StaticResources { listeners: vec![l], ..Default::default() }), ..Default::default() };
    EnvoySpec::typed(format!("gateway-{}-minimal", cluster.0), cluster, 1, typed)
}

fn alive(pid: u32) -> bool {
    // A reaped or never-existing pid has no /proc entry; a zombie is dead too.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

#[test]
fn envoys_start_in_parallel_on_their_own_ranges_and_stop_on_drop() {
    let envoys = Envoy::start_all(vec![minimal(SimCluster(31)), minimal(SimCluster(32))]);
    assert_eq!(envoys[0].admin_addr().ip().to_string(), "127.0.31.1");
    assert_eq!(envoys[1].listener("l").ip().to_string(), "127.0.32.1");
    let pids: Vec<u32> = envoys.iter().map(pid_of).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    drop(envoys);
    for p in pids {
        assert!(!alive(p), "envoy {p} outlived its Envoy handle");
    }
}

fn pid_of(e: &Envoy) -> u32 {
    let info = e.admin_get("/server_info").expect("server_info");
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    // Envoy does not report its pid; find the process whose command line holds its directory.
    let dir = e.dir().display().to_string();
    assert!(v["state"] == "LIVE");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(&dir)).unwrap_or(false))
        .expect("envoy pid")
}

/// Not a test on its own: the body of the child process in the next test.
#[test]
#[ignore = "run only as the child of a_killed_test_process_takes_its_envoys_with_it"]
fn child_starts_an_envoy_and_waits() {
    if std::env::var_os("MULTICLOUD_TESTBED_CHILD").is_none() {
        return;
    }
    let e = Envoy::start(minimal(SimCluster(33)));
    println!("ENVOY_PID={}", pid_of(&e));
    std::thread::sleep(Duration::from_secs(120)); // killed by the parent long before
}

#[test]
fn a_killed_test_process_takes_its_envoys_with_it() {
    use std::io::{BufRead as _, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_starts_an_envoy_and_waits", "--ignored", "--nocapture"])
        .env("MULTICLOUD_TESTBED_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid: u32 = loop {
        let line = lines.next().expect("child ended before starting its envoy").unwrap();
        if let Some(p) = line.strip_prefix("ENVOY_PID=") {
            break p.parse().unwrap();
        }
    };
    assert!(alive(pid));
    child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.wait().unwrap();
    wait_until("the orphaned envoy to die with its test process", Duration::from_secs(10), || {
        if alive(pid) {
            Err(format!("pid {pid} alive"))
        } else {
            Ok(())
        }
    });
}
