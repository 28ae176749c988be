//! Cross-cluster traffic: the latency a call through the gateway adds, and
//! its throughput, in both gateway modes, against a direct local call
//! measured in the same run.
//!
//! Two meshes of two simulated clusters each (started in parallel): A runs
//! no `foo`, B runs it; `balanced` sameness. Targets, all entering A's
//! sidecar `outbound` listener as A's application would:
//! - local: Host `local.foo` → mTLS to A's own sidecar inbound → A's echo app
//!   (`TrafficSidecar::local_route`: the same sidecar path, no gateway hop);
//! - passthrough: Host `foo.abc…` → merged cluster → B's gateway mesh port
//!   (TLS passed through by SNI) → B's sidecar inbound → B's echo app;
//! - identity-enforcing: the same call in the other mesh; B's gateway
//!   terminates the peer's mTLS, runs the `multicloud-mesh` filter and
//!   re-originates mTLS to B's sidecar.
//!
//! Loopback ranges 44–45 (passthrough) and 46–47 (identity-enforcing).

use multicloud_core::metadata::MeshMode;
use multicloud_e2e::bench::{interleave, median, write_section, wrk, Load, Sample};
use multicloud_e2e::mesh::{start_mesh, Cluster, MeshOptions, TrafficOptions, FOO};
use multicloud_e2e::sidecar::LOCAL_ROUTE_HOST;
use multicloud_e2e::SimCluster;
use multicloud_proto::traffic::Sameness;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a target may take to answer 200 from the expected cluster.
const READY: Duration = Duration::from_secs(60);
const PATH: &str = "/whoami";

fn mesh_options(mode: MeshMode) -> MeshOptions {
    MeshOptions {
        ads: Some(false),
        traffic: Some(TrafficOptions {
            mode,
            sameness: Sameness::Balanced,
            foo_in: &[false, true],
            local_route: true,
            one_request_per_connection: false,
        }),
        ..Default::default()
    }
}

/// What one call to `host` from A's application got: on 200, the answering
/// cluster and the caller cluster the gateway told it
/// (`x-multicloud-caller-cluster`); else a short description.
fn observe(a: &Cluster, host: &str) -> Result<(String, Option<String>), String> {
    match a.call(host, &[]) {
        Ok(r) if r.status == 200 => {
            let v = r.json();
            let caller = v["headers"]["x-multicloud-caller-cluster"].as_str().map(str::to_string);
            Ok((v["cluster"].as_str().unwrap_or("?").to_string(), caller))
        }
        Ok(r) => Err(format!("status {}: {}", r.status, r.text().chars().take(120).collect::<String>().trim())),
        Err(e) => Err(format!("error {e}")),
    }
}

/// Polls until `host` answers 200 from `want` five calls in a row (and,
/// with `caller`, the gateway told the app that `caller` called: the
/// identity-enforcing filter is in force), or returns the last observation
/// at the deadline. Once the right cluster answers, a missing caller header
/// gets `settle` more, not the whole `timeout`.
fn wait_ready(a: &Cluster, host: &str, want: &str, caller: Option<&str>, timeout: Duration, settle: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut answering_since: Option<Instant> = None;
    let mut delay = Duration::from_millis(20);
    loop {
        let seen: Result<Vec<(String, Option<String>)>, String> = (0..5).map(|_| observe(a, host)).collect();
        let last = match seen {
            Ok(who) if who.iter().all(|(w, c)| w == want && (caller.is_none() || c.as_deref() == caller)) => return Ok(start.elapsed()),
            Ok(who) if who.iter().all(|(w, _)| w == want) => {
                let since = *answering_since.get_or_insert_with(Instant::now);
                let why = format!(
                    "{want} answered 200 but without `x-multicloud-caller-cluster: {}` (saw {:?}): the gateway's `multicloud-mesh` filter is not in force",
                    caller.unwrap_or_default(),
                    who[0].1
                );
                if since.elapsed() >= settle {
                    return Err(why);
                }
                why
            }
            Ok(who) => format!("answered by {:?}, want {want}", who.iter().map(|w| &w.0).collect::<Vec<_>>()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(last);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

fn outbound(c: &Cluster) -> SocketAddr {
    c.traffic.as_ref().expect("traffic test bed").sidecar.listener("outbound")
}

fn headers(host: &str) -> &'static [(&'static str, &'static str)] {
    let host: &'static str = Box::leak(host.to_string().into_boxed_str());
    Box::leak(vec![("Host", host)].into_boxed_slice())
}

/// One measured target.
struct Target {
    name: &'static str,
    what: &'static str,
    addr: SocketAddr,
    host: &'static str,
    /// `Err(why)`: not measured (the bed did not answer 200 from the expected cluster).
    ready: Result<(), String>,
}

#[derive(Default, Clone, Copy)]
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    non_2xx: u64,
}

fn summarize(samples: &[Sample]) -> Summary {
    Summary {
        rps: median(samples.iter().map(|s| s.rps).collect()),
        p50: median(samples.iter().map(|s| s.p50_ms).collect()),
        p99: median(samples.iter().map(|s| s.p99_ms).collect()),
        non_2xx: samples.iter().map(|s| s.non_2xx).sum(),
    }
}

type Run = Box<dyn FnMut() -> Sample>;

/// Runs the measured targets interleaved at `load`; `None` for a target not measured.
fn measure(targets: &[Target], load: Load, rounds: usize) -> Vec<Option<Summary>> {
    let live: Vec<usize> = (0..targets.len()).filter(|&i| targets[i].ready.is_ok()).collect();
    let mut runs: Vec<(&str, Run)> = live
        .iter()
        .map(|&i| {
            let t = &targets[i];
            let (addr, h) = (t.addr, headers(t.host));
            let run: Run = Box::new(move || wrk(addr, PATH, h, load));
            (t.name, run)
        })
        .collect();
    let mut refs: Vec<(&str, &mut dyn FnMut() -> Sample)> =
        runs.iter_mut().map(|(n, f)| (*n, &mut **f as &mut dyn FnMut() -> Sample)).collect();
    let samples = interleave(rounds, &mut refs);
    let mut out = vec![None; targets.len()];
    for (k, &i) in live.iter().enumerate() {
        out[i] = Some(summarize(&samples[k]));
    }
    out
}

fn envoy_version() -> String {
    std::process::Command::new(multicloud_e2e::paths::envoy())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            // "... version: <hash>/1.40.0/Clean/RELEASE/BoringSSL"
            text.split('/').find(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit()) && p.contains('.')).map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn table(targets: &[Target], results: &[Option<Summary>], connections: u32) -> String {
    let mut out = format!(
        "| target (`-c{connections}`) | req/s | p50 | p99 | non-2xx | throughput vs local | added p50 | added p99 |\n|---|---|---|---|---|---|---|---|\n"
    );
    let local = results[0].filter(|l| l.non_2xx == 0);
    for (i, (t, r)) in targets.iter().zip(results).enumerate() {
        match (r, &t.ready) {
            (Some(s), _) => {
                let valid = s.non_2xx == 0;
                let flag = if valid { String::new() } else { " — **includes non-2xx answers: not a valid measurement**".into() };
                let vs = match (i, local, valid) {
                    (0, _, _) => "(baseline) | | ".to_string(),
                    (_, Some(l), true) => format!("{:.2}× | {:+.3} ms | {:+.3} ms ", s.rps / l.rps, s.p50 - l.p50, s.p99 - l.p99),
                    _ => "n/a | n/a | n/a ".to_string(),
                };
                out += &format!(
                    "| {}{flag} | {:.0} | {:.3} ms | {:.3} ms | {} | {vs}|\n",
                    t.name,
                    s.rps,
                    s.p50,
                    s.p99,
                    if valid { "0".to_string() } else { format!("**{}**", s.non_2xx) }
                );
            }
            (None, Err(why)) => out += &format!("| {} | not measured: {} | | | | | | |\n", t.name, why.replace('|', "\\|")),
            (None, Ok(())) => out += &format!("| {} | not measured | | | | | | |\n", t.name),
        }
    }
    out
}

pub fn run() {
    eprintln!("== traffic: a cross-cluster call through the gateway (both modes) vs a direct local call");
    let load = Load::from_env();
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let (sp, se) = ([SimCluster(44), SimCluster(45)], [SimCluster(46), SimCluster(47)]);
    let started = Instant::now();
    let hp = std::thread::spawn(move || start_mesh(&sp, mesh_options(MeshMode::Passthrough)));
    let he = std::thread::spawn(move || start_mesh(&se, mesh_options(MeshMode::IdentityEnforcing)));
    let p = hp.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let e = he.join().map_err(|e| {
        let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        format!("the identity-enforcing mesh did not start ({})", why.chars().take(200).collect::<String>())
    });
    eprintln!("  meshes started in {:.1?}", started.elapsed());
    let (name_a, name_b) = (Cluster::object_name(sp[0]), Cluster::object_name(sp[1]));
    let (name_ea, name_eb) = (Cluster::object_name(se[0]), Cluster::object_name(se[1]));

    let ready = |c: &Cluster, host: &str, want: &str, caller: Option<&str>| -> Result<(), String> {
        match wait_ready(c, host, want, caller, READY, Duration::from_secs(10)) {
            Ok(took) => {
                eprintln!("  {} → {host}: {want} answers 200 after {took:.1?}", Cluster::object_name(c.sim));
                Ok(())
            }
            Err(last) => {
                eprintln!("  {} → {host}: not ready after {READY:?}: {last}", Cluster::object_name(c.sim));
                Err(if last.contains("not in force") { last } else { format!("calls refused or failing ({last})") })
            }
        }
    };
    let mut targets = vec![
        Target {
            name: "local",
            what: "A's app → A's sidecar `outbound` (Host `local.foo`) → mTLS → A's sidecar `inbound` → A's echo app",
            addr: outbound(&p[0]),
            host: LOCAL_ROUTE_HOST,
            ready: ready(&p[0], LOCAL_ROUTE_HOST, &name_a, None),
        },
        Target {
            name: "cross-cluster, passthrough",
            what: "A's app → A's sidecar (Host `foo.abc.svc.cluster.local`, merged cluster) → mTLS, SNI `outbound_.80_._.foo…` → \
                   B's gateway mesh port (TLS inspector, TCP proxy) → B's sidecar `inbound` → B's echo app",
            addr: outbound(&p[0]),
            host: FOO,
            ready: ready(&p[0], FOO, &name_b, None),
        },
    ];
    if let Ok(e) = &e {
        // The enforcing mesh's own local baseline is not measured: one local row is enough.
        targets.push(Target {
            name: "cross-cluster, identity-enforcing",
            what: "same call in the identity-enforcing mesh: B's gateway terminates A's mTLS (SNI `<A's uuid>.peer.multicloud`), \
                   runs the `multicloud-mesh` filter, re-originates mTLS → B's sidecar `inbound` → B's echo app",
            addr: outbound(&e[0]),
            host: FOO,
            ready: ready(&e[0], FOO, &name_eb, Some(&name_ea)),
        });
    } else {
        targets.push(Target {
            name: "cross-cluster, identity-enforcing",
            what: "see above",
            addr: outbound(&p[0]),
            host: FOO,
            ready: Err(e.as_ref().err().cloned().unwrap_or_default()),
        });
    }
    assert!(targets[0].ready.is_ok(), "the local baseline does not answer: {:?}", targets[0].ready);

    // Warm-up (connection pools, TLS sessions); not recorded.
    for t in targets.iter().filter(|t| t.ready.is_ok()) {
        wrk(t.addr, PATH, headers(t.host), Load { seconds: 1, connections: load.connections });
    }
    eprintln!("-- open connections: -c{}", load.connections);
    let loaded = measure(&targets, load, rounds);
    let single = Load { seconds: load.seconds, connections: 1 };
    eprintln!("-- closed loop, one connection: -c1");
    let closed = measure(&targets, single, rounds);
    let echo_counts: Vec<String> = p
        .iter()
        .chain(e.as_ref().map(|v| v.iter()).into_iter().flatten())
        .map(|c| format!("{}: {}", Cluster::object_name(c.sim), c.traffic.as_ref().map(|t| t.echo.count()).unwrap_or(0)))
        .collect();
    eprintln!("  requests served per echo app: {}", echo_counts.join(", "));
    drop(e);
    drop(p);

    let rows: String = targets.iter().map(|t| format!("- **{}**: {}.\n", t.name, t.what)).collect();
    let body = format!(
        "## Cross-cluster traffic (issue: the added latency and throughput of a call through the gateway)\n\n\
Command: `scripts/bench.sh traffic` (`make bench` runs all sections; both run \
`cargo run --release -p multicloud-e2e --bin bench -- traffic`).\n\n\
Run: {date}, Envoy {envoy} (`--concurrency 1` each), 2 shared CPU cores, loopback; load: `wrk -t1 -d{d}s` with \
`-c{c}` and then `-c1` (closed loop, one request at a time), {rounds} interleaved rounds, median of the rounds for req/s, p50 and p99 \
(wrk's per-run percentiles); non-2xx summed over the rounds. \
Two meshes of two simulated clusters each, started in the same run: A runs no `foo`, B runs it, `balanced` sameness; \
the agents are the real `multicloud-agent` (debug build) serving the sidecars and gateways over ADS. \
Every call is `GET {PATH}` entering A's sidecar as A's application would; the echo app answers JSON naming its cluster, \
checked before the load: each target answered 200 from the expected cluster, and the identity-enforcing one \
only counts once B's app is told by the gateway that cluster A called (`x-multicloud-caller-cluster`), i.e. the `multicloud-mesh` filter is in force.\n\n\
{rows}\n\
{t1}\n\
{t2}\n\
\"Added\" = cross-cluster minus local, in the same run. Remarks:\n\n\
- Every process (wrk, the Envoys, the echo apps, the agents, and whatever else runs on the machine) shares the same 2 cores. \
The local row runs on one Envoy thread (A's sidecar is both the client and the server side, `--concurrency 1`); a cross-cluster \
row spreads over three (A's sidecar, B's gateway, B's sidecar). Under `-c{c}` the local row is bound by that one thread, so a \
cross-cluster row can show *more* req/s than local: that ratio is not a gateway cost, and the extra Envoys' CPU is paid \
on the same 2 cores. The `-c1` rows (one request at a time) are the per-call latency figures.\n\
- Loopback has no network latency: a real cross-cluster hop adds the round trip between the clusters on top of these figures.\n\
- The local call still does mTLS (the sidecar to itself); the passthrough gateway adds a TCP proxy hop with no TLS of its own; \
the identity-enforcing gateway adds a TLS termination, an HTTP filter chain with the Wasm `multicloud-mesh` filter and a second TLS origination.\n\
- The local route's client TLS uses the same workload certificate and local root as files, not SDS: a static cluster \
with SDS over ADS crashes Envoy 1.40 at start (`tests/src/sidecar.rs`, `LocalRouteTls`). The handshake is the same.\n\
- A row with non-2xx answers is reported, not hidden, and gets no ratio; a row \"not measured\" says why.\n",
        date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        envoy = envoy_version(),
        c = load.connections,
        d = load.seconds,
        t1 = table(&targets, &loaded, load.connections),
        t2 = table(&targets, &closed, 1),
    );
    eprintln!("{body}");
    write_section("traffic", &body);
}
