//! The DaemonSet's cost at scale: a cluster whose agent runs as 1, 3 and 10
//! replicas (as on 1, 3 and 10 nodes) against a real API server, linked to a
//! peer, on deploy/'s timing. Per replica count, over a steady window: the
//! API requests the holder and each follower make (the API server's audit
//! log, told apart by each replica's User-Agent), the fetches the peer's
//! metadata endpoint sees (its gateway's counters), and each replica's RSS;
//! then the takeover after the holder's SIGKILL (to the new holder's first
//! state write). The per-node model for 1,000 nodes follows from these.
//! Bounded: one window per replica count, every wait with a deadline.

use multicloud_e2e::agent::Agent;
use multicloud_e2e::bench::write_section;
use multicloud_e2e::kube_mesh::{object_name, start_kube_mesh, KubeCluster, KubeMeshOptions};
use multicloud_e2e::{wait_until, SimCluster};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn window() -> Duration {
    Duration::from_secs(std::env::var("BENCH_DAEMONSET_WINDOW_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(90))
}

fn metric(agent: &Agent, name: &str) -> f64 {
    agent
        .metrics()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

fn rss_mib(a: &Agent) -> f64 {
    let pid = a.pid().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0)
        / 1024.0
}

/// The agent's audit events so far, by replica (its User-Agent's pod name): `verb resource`.
fn audit(c: &KubeCluster) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(c.cp.dir().join("audit.log")).unwrap_or_default();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        if e["user"]["username"] != "system:serviceaccount:istio-system:istio-multicloud-agent" {
            continue;
        }
        let pod =
            e["userAgent"].as_str().and_then(|u| u.rsplit_once('(')).map(|(_, p)| p.trim_end_matches(')').to_string()).unwrap_or_default();
        let resource =
            match (e["objectRef"]["apiGroup"].as_str(), e["objectRef"]["resource"].as_str(), e["objectRef"]["subresource"].as_str()) {
                (Some(g), Some(r), Some(s)) => format!("{g}/{r}/{s}"),
                (Some(g), Some(r), None) => format!("{g}/{r}"),
                (None, Some(r), Some(s)) => format!("{r}/{s}"),
                (None, Some(r), None) => r.to_string(),
                _ => e["requestURI"].as_str().unwrap_or("").to_string(),
            };
        out.entry(pod).or_default().push(format!("{} {resource}", e["verb"].as_str().unwrap_or("")));
    }
    out
}

struct Run {
    replicas: usize,
    holder_per_min: BTreeMap<String, f64>,
    follower_per_min: f64,
    fetches_per_min: f64,
    holder_rss: f64,
    follower_rss_max: f64,
    takeover: Duration,
}

fn one(replicas: usize, sims: [SimCluster; 2]) -> Run {
    let mut clusters = start_kube_mesh(&sims, KubeMeshOptions { replicas, deploy_timing: true, ..Default::default() });
    let peer = object_name(sims[1]);
    {
        let (a, b) = (&clusters[0], &clusters[1]);
        a.wait_imc_ready(&peer, Duration::from_secs(180));
        b.wait_imc_ready(&object_name(sims[0]), Duration::from_secs(180));
    }
    let a = &clusters[0];
    let holder = wait_until("a Lease holder", Duration::from_secs(60), || {
        (0..replicas).find(|i| metric(&a.agents[*i], "multicloud_agent_leader") == 1.0).ok_or_else(|| "none".to_string())
    });
    // Followers serving (their state applied) before the window opens.
    for (i, f) in a.agents.iter().enumerate().filter(|(i, _)| *i != holder) {
        wait_until(&format!("follower agent-{i} ready"), Duration::from_secs(60), || {
            if f.get("/readyz").map(|r| r.status) == Ok(200) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        });
    }
    let gw_b = clusters[1].gateway.as_ref().expect("B's gateway");
    let served = |c: &multicloud_e2e::envoy::Envoy| -> u64 {
        ["served.public_json", "served.private_multicluster_json", "not_modified.public_json"]
            .iter()
            .map(|n| c.stat(&format!("wasmcustom.multicloud_edge.{n}")).unwrap_or(0))
            .sum()
    };
    let before = audit(a);
    let f0 = served(gw_b);
    let t = Instant::now();
    // The window itself: a steady state measured over a fixed time.
    std::thread::sleep(window());
    let minutes = t.elapsed().as_secs_f64() / 60.0;
    let after = audit(a);
    let fetched = (served(gw_b) - f0) as f64;
    let new = |pod: &str| -> Vec<String> {
        let b = before.get(pod).map_or(0, Vec::len);
        after.get(pod).map(|v| v[b.min(v.len())..].to_vec()).unwrap_or_default()
    };
    let mut holder_per_min = BTreeMap::new();
    for r in new(&format!("agent-{holder}")) {
        *holder_per_min.entry(r).or_insert(0.0) += 1.0 / minutes;
    }
    let follower_requests: usize = (0..replicas).filter(|i| *i != holder).map(|i| new(&format!("agent-{i}")).len()).sum();
    let followers = replicas.saturating_sub(1).max(1) as f64;
    let holder_rss = rss_mib(&a.agents[holder]);
    let follower_rss_max = (0..replicas).filter(|i| *i != holder).map(|i| rss_mib(&a.agents[i])).fold(0.0, f64::max);
    // Takeover: SIGKILL the holder; time to the new holder's first state write.
    let t = Instant::now();
    clusters[0].agents[holder].kill();
    let takeover = if replicas > 1 {
        let a = &clusters[0];
        wait_until("a follower's first write as the new holder", Duration::from_secs(60), || {
            (0..replicas)
                .filter(|i| *i != holder)
                .find(|i| metric(&a.agents[*i], "multicloud_agent_state_writes_total") >= 1.0)
                .map(|_| t.elapsed())
                .ok_or_else(|| "not yet".to_string())
        })
    } else {
        Duration::ZERO
    };
    Run {
        replicas,
        holder_per_min,
        follower_per_min: follower_requests as f64 / followers / minutes,
        fetches_per_min: fetched / minutes,
        holder_rss,
        follower_rss_max,
        takeover,
    }
}

pub fn run() {
    eprintln!("== daemonset: the agent's cost by replica count");
    // RSS as deployed: the release build (scripts/bench.sh builds it).
    if let Some(release) = std::env::var_os("MULTICLOUD_AGENT_RELEASE") {
        std::env::set_var("MULTICLOUD_AGENT", release);
    }
    let runs: Vec<Run> = [(1, [161, 162]), (3, [163, 164]), (10, [165, 166])]
        .into_iter()
        .map(|(n, [a, b])| {
            let r = one(n, [SimCluster(a), SimCluster(b)]);
            eprintln!("replicas {n}: holder {:?}, follower {:.2}/min, peer fetches {:.1}/min, RSS holder {:.1} MiB, follower max {:.1} MiB, takeover {:?}", r.holder_per_min, r.follower_per_min, r.fetches_per_min, r.holder_rss, r.follower_rss_max, r.takeover);
            r
        })
        .collect();
    let mut rows = String::new();
    for r in &runs {
        let holder_total: f64 = r.holder_per_min.values().sum();
        rows.push_str(&format!(
            "| {} | {holder_total:.1} | {:.2} | {:.1} | {:.1} MiB | {} | {} |\n",
            r.replicas,
            r.follower_per_min,
            r.fetches_per_min,
            r.holder_rss,
            if r.replicas > 1 { format!("{:.1} MiB", r.follower_rss_max) } else { "-".into() },
            if r.replicas > 1 { format!("{:.1} s", r.takeover.as_secs_f64()) } else { "-".into() },
        ));
    }
    let holder_detail = runs
        .last()
        .map(|r| r.holder_per_min.iter().map(|(k, v)| format!("`{k}` {v:.1}/min")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let max_follower_rss = runs.iter().map(|r| r.follower_rss_max).fold(0.0, f64::max);
    let follower_req = runs.iter().map(|r| r.follower_per_min).fold(0.0, f64::max);
    let fetch_rates: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.fetches_per_min)).collect();
    let holder_total = runs.last().map(|r| r.holder_per_min.values().sum::<f64>()).unwrap_or(0.0);
    let body = format!(
        "## The DaemonSet at scale (issue 19)\n\nCommand: `scripts/bench.sh daemonset` (`BENCH_DAEMONSET_WINDOW_SECONDS={w}`).\n\n\
Run: {date}; the agent's release build; per replica count, a real kube-apiserver (tests/src/kube.rs) and the agent as that many replicas (deploy/'s timing: refresh 30 s), linked to one peer; a steady window of {w} s after both sides are Ready and every follower is serving. \
Requests from the API server's audit log (each replica's User-Agent names its pod); fetches from the peer's gateway counters (public and private documents); RSS from /proc. \
Takeover: SIGKILL of the holder to the new holder's first state write (the Lease lasts 15 s).\n\n\
| replicas | holder requests/min | requests/min per follower | peer's fetches/min | holder RSS | follower RSS (max) | takeover |\n|---|---|---|---|---|---|---|\n{rows}\n\
The holder's requests at 10 replicas: {holder_detail}. A follower sends nothing in the steady state: its two watches (the Lease, the state ConfigMap) stay open, and the holder's Lease renewals and state writes reach it as watch events.\n\n\
Goals: a follower makes no request beyond its watches ({m1}: at most {follower_req:.2}/min); the peer sees the same fetch rate whatever the replica count ({m2}: {fr}/min); follower RSS ≤ 24 MB ({m3}: at most {max_follower_rss:.1} MiB).\n\n\
**Per node, at 1,000 nodes**, from these figures: the API server gets {holder_total:.1} requests/min from the holder and none from the 999 followers, \
plus 2 long-lived watches per follower (1,998 watches; each Lease renewal, every 5 s, is one watch event per follower); the peer's metadata endpoint sees {f1}/min, as at one node; \
the agent's memory is about {hr:.0} MiB + 999 × {fr2:.0} MiB. Before this change each replica polled the facts (about 6 requests every 10 s: 36,000/min at 1,000 nodes, plus 1,000 full Node lists every 10 s for a NodePort gateway) and fetched every peer.\n",
        w = window().as_secs(),
        date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
        m1 = if follower_req == 0.0 { "met" } else { "**not met**" },
        m2 = if runs.iter().all(|r| (r.fetches_per_min - runs[0].fetches_per_min).abs() <= runs[0].fetches_per_min * 0.5 + 1.0) { "met" } else { "**not met**" },
        m3 = if max_follower_rss <= 24.0 { "met" } else { "**not met**" },
        fr = fetch_rates.join(", "),
        f1 = fetch_rates.first().cloned().unwrap_or_default(),
        hr = runs.last().map(|r| r.holder_rss).unwrap_or(0.0),
        fr2 = max_follower_rss,
    );
    eprintln!("{body}");
    write_section("daemonset", &body);
}
