//! The soak: cluster A (160) linked to 20 peers (161-180), each a test-bed
//! cluster with its own agent and gateway Envoy on loopback (the peers link
//! only A). For `BENCH_SOAK_SECONDS` (600 by default) the peers flap, one
//! action every 2 s chosen in turn: a gateway killed (and restarted two
//! actions later), a peer's exported services changed, A's object for a
//! peer removed (and added back two actions later). Every 10 s A's agent is
//! sampled: RSS, open file descriptors, threads. At the end everything is
//! put back, and every one of A's objects must be Ready with its peer's UUID
//! pinned, and no removed object may linger in A's status. The slopes (least
//! squares, after the first minute) go to BENCHMARKS.md. Bounded: the run's
//! length, every wait with a deadline.

use multicloud_core::metadata::{ExportedService, ServicePort};
use multicloud_e2e::bench::write_section;
use multicloud_e2e::mesh::{start_full_mesh, Cluster};
use multicloud_e2e::{wait_until, SimCluster};
use std::time::{Duration, Instant};

const PEERS: u8 = 20;

fn soak_for() -> Duration {
    Duration::from_secs(std::env::var("BENCH_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600))
}

struct Sample {
    at: f64,
    rss_kib: f64,
    fds: f64,
    threads: f64,
}

fn sample(pid: u32, at: f64) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as f64).unwrap_or(0.0);
    Sample { at, rss_kib: field("VmRSS:"), fds, threads: field("Threads:") }
}

/// Least-squares slope of `y` over `x`, per minute of `x` in seconds.
fn slope_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}

fn services(n: usize) -> Vec<ExportedService> {
    (0..n)
        .map(|i| ExportedService {
            hostname: format!("svc-{i}.abc.svc.cluster.local"),
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Some("HTTP".into()) }],
            ready_endpoints: 1,
        })
        .collect()
}

pub fn run() {
    let sims: Vec<SimCluster> = (0..=PEERS).map(|i| SimCluster(160 + i)).collect();
    let started = Instant::now();
    let mut cs = start_full_mesh(&sims);
    // A star: each peer links only A.
    let a_name = Cluster::object_name(cs[0].sim);
    for c in cs.iter_mut().skip(1) {
        c.peers.retain(|p| p.object_name == a_name);
        c.rewrite_standalone();
    }
    let all_peers = cs[0].peers.clone();
    for p in &all_peers {
        cs[0].agent.wait_condition(&p.object_name, "Ready", "True", Duration::from_secs(180));
    }
    let setup = started.elapsed();
    let pid = cs[0].agent.pid().expect("A's agent runs");

    let soak = soak_for();
    let t0 = Instant::now();
    let mut samples = vec![sample(pid, 0.0)];
    let mut next_sample = Duration::from_secs(10);
    let (mut killed, mut removed): (Vec<usize>, Vec<String>) = (Vec::new(), Vec::new());
    let (mut kills, mut changes, mut removals) = (0usize, 0usize, 0usize);
    let mut step = 0usize;
    while t0.elapsed() < soak {
        let peer = 1 + (step * 7) % PEERS as usize;
        match step % 3 {
            0 => {
                // Restart the gateway killed two actions ago, kill this one.
                if killed.len() >= 2 {
                    let i = killed.remove(0);
                    cs[i].gateway.restart();
                }
                if !killed.contains(&peer) {
                    cs[peer].gateway.kill();
                    killed.push(peer);
                    kills += 1;
                }
            }
            1 => {
                cs[peer].services = services(1 + step % 40);
                cs[peer].rewrite_standalone();
                changes += 1;
            }
            _ => {
                if removed.len() >= 2 {
                    let name = removed.remove(0);
                    let p = all_peers.iter().find(|p| p.object_name == name).expect("a known peer").clone();
                    cs[0].peers.push(p);
                }
                let name = Cluster::object_name(cs[peer].sim);
                if let Some(i) = cs[0].peers.iter().position(|p| p.object_name == name) {
                    cs[0].peers.remove(i);
                    removed.push(name);
                    removals += 1;
                }
                cs[0].rewrite_standalone();
            }
        }
        step += 1;
        while t0.elapsed() >= next_sample {
            samples.push(sample(pid, t0.elapsed().as_secs_f64()));
            next_sample += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    samples.push(sample(pid, t0.elapsed().as_secs_f64()));

    // Put everything back; every status must match.
    for i in killed.drain(..) {
        cs[i].gateway.restart();
    }
    cs[0].peers = all_peers.clone();
    cs[0].rewrite_standalone();
    let settle = Instant::now();
    for (i, p) in all_peers.iter().enumerate() {
        let s = cs[0].agent.wait_condition(&p.object_name, "Ready", "True", Duration::from_secs(120));
        assert_eq!(s["remoteClusterUUID"], cs[i + 1].id.uuid.as_str(), "{}: the pin holds", p.object_name);
    }
    let settled = settle.elapsed();
    let objects = cs[0].agent.status()["objects"].as_object().map(|o| o.len()).unwrap_or(0);
    assert_eq!(objects, all_peers.len(), "A's status lists exactly its objects");
    wait_until("A's fetch metrics to name every peer", Duration::from_secs(30), || {
        let m = cs[0].agent.metrics();
        match all_peers.iter().find(|p| !m.contains(&format!("multicloud_agent_peer_ready{{peer=\"{}\"}} 1", p.object_name))) {
            None => Ok(()),
            Some(p) => Err(format!("{} not ready in /metrics", p.object_name)),
        }
    });

    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= 60.0).collect();
    let series = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> { steady.iter().map(|s| (s.at, f(s))).collect() };
    let (rss, fds, threads) = (series(|s| s.rss_kib), series(|s| s.fds), series(|s| s.threads));
    let range = |v: &[(f64, f64)]| {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| (lo.min(*y), hi.max(*y)));
        format!("{lo:.0}-{hi:.0}")
    };
    let body = format!(
        "## Soak: 20 flapping peers (issue 20)\n\n\
         Command: `scripts/bench.sh soak` (`BENCH_SOAK_SECONDS={secs}`).\n\n\
         Run: {date}; cluster A's agent (the test bed's debug build, standalone, 1 s refresh) linked to 20 peers, each a test-bed cluster \
         with its own agent and gateway Envoy on loopback (127.0.160-180.x); set up in {setup:.0?}. For {secs} s, one action every 2 s \
         in turn: a peer's gateway killed (restarted two kills later; {kills} kills), a peer's exported services changed ({changes} \
         changes), A's object for a peer removed (added back two removals later; {removals} removals). A's agent sampled every 10 s \
         ({n} samples); slopes by least squares after the first minute.\n\n\
         | | range after the first minute | slope |\n|---|---|---|\n\
         | RSS (KiB) | {rss_r} | {rss_s:+.1} KiB/min |\n\
         | open file descriptors | {fds_r} | {fds_s:+.2}/min |\n\
         | threads | {thr_r} | {thr_s:+.2}/min |\n\n\
         At the end, with every gateway up and every object back: all 20 objects Ready with their peer's UUID pinned within {settled:.1?}, \
         A's status lists exactly the 20 objects, and /metrics has each peer ready. Goal: flat slopes (RSS within ±1% of its mean per \
         10 minutes, no growth in descriptors or threads): {verdict}.\n",
        secs = soak.as_secs(),
        date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        n = samples.len(),
        rss_r = range(&rss),
        rss_s = slope_per_min(&rss),
        fds_r = range(&fds),
        fds_s = slope_per_min(&fds),
        thr_r = range(&threads),
        thr_s = slope_per_min(&threads),
        verdict = {
            let mean = rss.iter().map(|p| p.1).sum::<f64>() / rss.len().max(1) as f64;
            let flat = (slope_per_min(&rss) * 10.0).abs() <= 0.01 * mean && slope_per_min(&fds) <= 0.1 && slope_per_min(&threads) <= 0.1;
            if flat {
                "met"
            } else {
                "**missed**"
            }
        },
    );
    eprintln!("{body}");
    write_section("soak", &body);
}
