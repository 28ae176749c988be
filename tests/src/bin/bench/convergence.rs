//! Convergence under istiod: how long a user waits from applying the
//! `IstioMulticloud` objects to the first answered cross-cluster call, on the
//! real-Istio tier (tests/src/kube_mesh.rs with `KubeMeshOptions::istio`:
//! real API servers and istiods, istiod-run gateways serving the metadata
//! endpoint and the API proxy, pilot-agent-run sidecars) with the agents on
//! deploy/'s own timing (refresh, backoff, facts interval: the defaults,
//! not the test bed's short ones).
//!
//! Both clusters and both workloads (A's client, B's `foo`) are up before
//! the first link, so each run times the join and nothing else. A run
//! unlinks both sides, waits until A's call fails closed, then applies the
//! objects and polls every step of A's side (A calls B) until the first 200:
//! public document, private document, remote secret written, istiod synced
//! the remote, the client's EDS holds B's gateway, first 200. Two scenarios:
//! both objects applied together; B's applied 2 minutes after A's (timed
//! from B's apply). Bounded: every wait has a deadline, the runs are counted.

use multicloud_e2e::bench::{median, write_section};
use multicloud_e2e::istio_mesh::{call_foo, start_client, start_foo, FOO, FOO_PORT};
use multicloud_e2e::kube_mesh::{link_endpoints, object_name, start_kube_mesh, KubeCluster, KubeMeshOptions};
use multicloud_e2e::{dump, hosts, wait_until, SimCluster};
use std::time::{Duration, Instant};

/// The steps of a join, in the order a user's request needs them.
const STEPS: [&str; 6] = [
    "public document (both sides)",
    "private document (both sides)",
    "remote secret written (A)",
    "istiod synced the remote (A)",
    "client's EDS has B's gateway",
    "first 200",
];

const DEADLINE: Duration = Duration::from_secs(180);

fn runs() -> usize {
    std::env::var("BENCH_CONVERGENCE_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

/// The delay between A's and B's apply in the second scenario.
fn delay() -> Duration {
    Duration::from_secs(std::env::var("BENCH_CONVERGENCE_DELAY_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120))
}

fn condition_true(c: &KubeCluster, object: &str, type_: &str) -> bool {
    let s = c.agents[0].status()["objects"][object].clone();
    s["conditions"].as_array().is_some_and(|cs| cs.iter().any(|x| x["type"] == type_ && x["status"] == "True"))
}

struct Bed<'a> {
    a: &'a KubeCluster,
    b: &'a KubeCluster,
    client: multicloud_e2e::istio::IstioGateway,
    client_addr: std::net::SocketAddr,
}

impl Bed<'_> {
    fn name_a(&self) -> String {
        object_name(self.a.sim)
    }
    fn name_b(&self) -> String {
        object_name(self.b.sim)
    }

    fn link(&self, c: &KubeCluster, peer: &KubeCluster) {
        link_endpoints(c.cp, &[(peer.sim, peer.metadata_endpoint.clone(), peer.edge_ca.pem())]);
    }

    fn answered(&self) -> bool {
        matches!(call_foo(self.client_addr, "/convergence"), Ok(r) if r.status == 200 && r.json()["cluster"] == self.name_b().as_str())
    }

    /// Deletes both objects and waits until A's call fails closed; returns
    /// how long that took.
    fn unlink(&self) -> Duration {
        let t = Instant::now();
        self.a.cp.kubectl_ok(&["delete", "imc", &self.name_b(), "--ignore-not-found"]);
        self.b.cp.kubectl_ok(&["delete", "imc", &self.name_a(), "--ignore-not-found"]);
        wait_until("A's call to fail closed after the unlink", DEADLINE, || {
            if self.answered() {
                Err("still answered".into())
            } else {
                Ok(())
            }
        });
        let took = t.elapsed();
        let secret = format!("istio-remote-secret-{}", self.name_b());
        wait_until("A's remote secret for B to go", DEADLINE, || {
            if self.a.cp.kubectl_ok(&["get", "secrets", "-n", "istio-system", "-o", "name"]).contains(&secret) {
                Err("still there".into())
            } else {
                Ok(())
            }
        });
        took
    }

    /// Polls every step from `t0` until the first 200; each step's time is
    /// when it was first seen.
    fn time_steps(&self, t0: Instant) -> [Duration; 6] {
        let (name_a, name_b) = (self.name_a(), self.name_b());
        let gw_b = format!("{}:{}", self.b.sim.ip(hosts::GATEWAY), self.b.mesh_port);
        let secret = format!("istio-remote-secret-{name_b}");
        let istiod_a = self.a.istiod.as_ref().expect("A's istiod");
        let mut seen: [Option<Duration>; 6] = [None; 6];
        while seen[5].is_none() {
            assert!(t0.elapsed() < DEADLINE, "no first 200 within {DEADLINE:?}: steps seen {seen:?}");
            let checks: [&dyn Fn() -> bool; 6] = [
                &|| {
                    condition_true(self.a, &name_b, "PublicMetadataExchangeReady")
                        && condition_true(self.b, &name_a, "PublicMetadataExchangeReady")
                },
                &|| {
                    condition_true(self.a, &name_b, "PrivateMetadataExchangeReady")
                        && condition_true(self.b, &name_a, "PrivateMetadataExchangeReady")
                },
                &|| self.a.cp.kubectl_ok(&["get", "secrets", "-n", "istio-system", "-o", "name"]).contains(&secret),
                &|| {
                    istiod_a.get("/debug/clusterz").ok().is_some_and(|r| {
                        r.json().as_array().into_iter().flatten().any(|c| c["id"] == name_b.as_str() && c["syncStatus"] == "synced")
                    })
                },
                &|| dump::endpoints(&self.client.config_dump(), &format!("outbound|{FOO_PORT}||{FOO}")).iter().any(|(a, _)| *a == gw_b),
                &|| self.answered(),
            ];
            for (i, check) in checks.iter().enumerate() {
                if seen[i].is_none() && check() {
                    seen[i] = Some(t0.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A step the poll missed (a later one came first) took no longer than its successor.
        let mut out = [Duration::ZERO; 6];
        let mut next = seen[5].unwrap_or_default();
        for i in (0..6).rev() {
            out[i] = seen[i].unwrap_or(next).min(next);
            next = out[i];
        }
        out
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn summary(runs: &[[Duration; 6]], step: usize) -> String {
    let v: Vec<f64> = runs.iter().map(|r| secs(r[step])).collect();
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    format!("{:.1} s ({min:.1}-{max:.1})", median(v.clone()))
}

pub fn run() {
    eprintln!("== convergence: join to first call under istiod");
    let sims = [SimCluster(151), SimCluster(152)];
    let t_up = Instant::now();
    let clusters =
        start_kube_mesh(&sims, KubeMeshOptions { replicas: 1, istio: true, defer_link: true, deploy_timing: true, ..Default::default() });
    let (a, b) = (&clusters[0], &clusters[1]);
    let (_foo_app, _foo) = start_foo(b);
    let (client, client_addr, _) = start_client(a);
    let bed = Bed { a, b, client, client_addr };
    eprintln!("clusters and workloads up in {:?}", t_up.elapsed());
    let n = runs();

    // Both objects applied together.
    let mut together = Vec::new();
    let mut unlinks = Vec::new();
    for i in 0..n {
        if i > 0 {
            unlinks.push(bed.unlink());
        }
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| bed.link(a, b));
            s.spawn(|| bed.link(b, a));
        });
        let steps = bed.time_steps(t0);
        eprintln!("together run {i}: {steps:?}");
        together.push(steps);
    }
    // B's object applied `delay()` after A's, timed from B's apply.
    let mut delayed = Vec::new();
    for i in 0..n {
        unlinks.push(bed.unlink());
        bed.link(a, b);
        // The scenario itself: an operator applies the other side later.
        std::thread::sleep(delay());
        let t0 = Instant::now();
        bed.link(b, a);
        let steps = bed.time_steps(t0);
        eprintln!("delayed run {i}: {steps:?}");
        delayed.push(steps);
    }
    let first = |r: &[[Duration; 6]]| median(r.iter().map(|s| secs(s[5])).collect());
    let met = |s: f64| if s <= 10.0 { "met" } else { "**not met**" };
    let mut rows = String::new();
    for (i, step) in STEPS.iter().enumerate() {
        rows.push_str(&format!("| {step} | {} | {} |\n", summary(&together, i), summary(&delayed, i)));
    }
    let unlink_v: Vec<f64> = unlinks.iter().map(|d| secs(*d)).collect();
    let body = format!(
        "## Convergence under istiod (issue 18)\n\nCommand: `scripts/bench.sh convergence` (`BENCH_CONVERGENCE_RUNS={n}`, \
`BENCH_CONVERGENCE_DELAY_SECONDS={delay}`).\n\n\
Run: {date}, istio.io/istio {version} ({label}), two real-Istio clusters on loopback (tests/src/kube_mesh.rs), the agents with deploy/'s timing. \
Both clusters and both workloads are up before the first link; each run unlinks both sides, waits until A's call fails closed, applies the objects \
and polls A's side every 50 ms. Time from the apply (from B's apply in the second column); median (min-max) over {n} runs; \
each step is when it was first seen.\n\n\
| step | both objects applied together | B's applied {delay} s after A's |\n|---|---|---|\n{rows}\n\
Goal: first 200 within 10 s (median), aim 5 s: together {t1:.1} s, {m1}; B later {t2:.1} s, {m2}.\n\n\
Unlink (both objects deleted) to A's call failing closed: median {u:.1} s over {nu} unlinks. Relink to answered: the first column.\n",
        delay = delay().as_secs(),
        date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
        version = a.istiod.as_ref().map(|i| i.build.version.clone()).unwrap_or_default(),
        label = a.istiod.as_ref().map(|i| i.build.label).unwrap_or_default(),
        t1 = first(&together),
        m1 = met(first(&together)),
        t2 = first(&delayed),
        m2 = met(first(&delayed)),
        u = median(unlink_v),
        nu = unlinks.len(),
    );
    eprintln!("{body}");
    write_section("convergence", &body);
}
