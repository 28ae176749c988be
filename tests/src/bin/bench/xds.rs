//! xDS benchmarks: the agent's own xDS code (`XdsSink` + `XdsServer`,
//! in this process) feeding a real Envoy sidecar over ADS.
//!
//! - push latency: from the agent learning a change (one service's ready
//!   endpoint count, so one EDS weight) to Envoy's ACK of the new version,
//!   at 1, 10 and 50 peers × 1,000 services;
//! - peak RSS of this process (the agent's xDS state and snapshots) at
//!   10,000 endpoints;
//! - bytes and resources sent for a one-endpoint change, delta vs SotW.

use multicloud_agent::data_plane::{DataPlane, EstablishedPeer};
use multicloud_agent::facts::LocalFacts;
use multicloud_agent::metrics::Metrics;
use multicloud_agent::sinks::xds::XdsSink;
use multicloud_agent::sinks::DataPlaneSink;
use multicloud_agent::xds::groups::{classify, SIDECAR_GROUP};
use multicloud_agent::xds::render::Renderer;
use multicloud_agent::xds::{XdsServer, ENDPOINT};
use multicloud_core::metadata::{ExportedService, IngressGateway, PrivateMetadata, ServicePort};
use multicloud_e2e::bench::write_section;
use multicloud_e2e::envoy::Envoy;
use multicloud_e2e::fixtures::{edge_config, sample_private, ClusterIdentity};
use multicloud_e2e::gateway::XdsClient;
use multicloud_e2e::{sidecar, SimCluster};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARMUP: usize = 3;

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn data_plane(local: &ClusterIdentity, roots: &[String], peers: usize, services: usize) -> DataPlane {
    let cluster = SimCluster(42);
    let edge = edge_config(local, &[], sample_private(cluster));
    let peers = (0..peers)
        .map(|i| EstablishedPeer {
            name: format!("peer-{i}"),
            cluster_uuid: multicloud_e2e::fixtures::random_uuid().parse().expect("a UUID"),
            root_ca: roots[i % roots.len()].clone(),
            private: Some(PrivateMetadata {
                ingress_gateways: vec![IngressGateway { address: format!("127.0.{}.1", 100 + i % 100), port: 15443 }],
                api_host: String::new(),
                network_name: format!("net-{i}"),
                services: (0..services)
                    .map(|j| ExportedService {
                        hostname: format!("svc-{j}.ns-{i}.svc.cluster.local"),
                        ports: vec![ServicePort { name: "http".into(), port: 80, protocol: None }],
                        ready_endpoints: 1,
                    })
                    .collect(),
                mesh_mode: None,
            }),
            enable_ingress_gateway: true,
            metadata_ca: None,
        })
        .collect();
    DataPlane {
        edge,
        local: LocalFacts {
            cluster_uuid: local.uuid.clone(),
            root_ca: local.root_pem(),
            ingress_gateways: vec![],
            api_host: String::new(),
            network_name: "net-local".into(),
            services: vec![],
            mesh_mode: Default::default(),
            local_endpoints: vec![],
        },
        peers,
    }
}

struct Run {
    peers: usize,
    delta: bool,
    initial_sync: Option<Duration>,
    latencies: Vec<Duration>,
    change_bytes: u64,
    change_resources: u64,
    hwm_kb: u64,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

fn one(rt: &tokio::runtime::Runtime, local: &ClusterIdentity, roots: &[String], peers: usize, delta: bool, changes: usize) -> Run {
    let server = XdsServer::new(classify());
    let renderer = Renderer {
        cache: Default::default(),
        traffic_cache: Default::default(),
        metrics: Arc::new(Metrics::default()),
        module: "/dev/null".into(),
        cert_secret: "default".into(),
        cert_sds_cluster: "ads".into(),
        workload_cert: Some(multicloud_agent::xds::served_cert::ServedCert::fixed(local.workload_cert("bench", "sidecar").into())),
        sameness: Default::default(),
        mesh_listen: None,
        gateway_cert: None,
        per_peer_clusters: false,
    };
    let sink = XdsSink::new(renderer, server.clone(), None);
    let listener = rt.block_on(tokio::net::TcpListener::bind((SimCluster(42).ip(2), 0))).expect("bind xds");
    let addr = listener.local_addr().expect("addr");
    let task = rt.spawn(server.clone().serve_tls(listener, local.xds_tls()));
    let mut dp = data_plane(local, roots, peers, 1000);
    let acked = |server: &XdsServer| -> Option<String> {
        server
            .proxies()
            .into_iter()
            .find(|p| p.group == SIDECAR_GROUP)
            .and_then(|p| p.types.get(ENDPOINT).and_then(|t| t.acked_version.clone()))
    };
    let want = |server: &XdsServer| server.snapshot(SIDECAR_GROUP).map(|s| s.version(ENDPOINT));
    let t0 = Instant::now();
    rt.block_on(sink.apply(&dp)).expect("apply");
    let envoy = Envoy::start_unready(sidecar::spec(SimCluster(42), &XdsClient::workload(local, addr, "bench", "sidecar"), delta));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut initial_sync = None;
    while Instant::now() < deadline {
        if acked(&server).is_some() && acked(&server) == want(&server) {
            initial_sync = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut latencies = Vec::new();
    let mut apply_times = Vec::new();
    let (mut change_bytes, mut change_resources) = (0, 0);
    if initial_sync.is_some() {
        // The first changes after the initial sync meet Envoy still settling
        // (about one second for the very first); WARMUP changes run unrecorded.
        for k in 0..changes + WARMUP {
            let svc = &mut dp.peers[k % peers].private.as_mut().expect("private").services[k % 1000];
            svc.ready_endpoints += 1;
            let before = server.sent_totals();
            let start = Instant::now();
            rt.block_on(sink.apply(&dp)).expect("apply");
            apply_times.push(start.elapsed());
            let target = want(&server);
            let limit = start + Duration::from_secs(30);
            while acked(&server) != target && Instant::now() < limit {
                std::thread::sleep(Duration::from_micros(500));
            }
            if acked(&server) == target && k >= WARMUP {
                latencies.push(start.elapsed());
            }
            let after = server.sent_totals();
            if k == WARMUP {
                (change_bytes, change_resources) = if delta {
                    (after.delta_bytes - before.delta_bytes, after.delta_resources - before.delta_resources)
                } else {
                    (after.sotw_bytes - before.sotw_bytes, after.sotw_resources - before.sotw_resources)
                };
            }
        }
    }
    let hwm_kb = vm_hwm_kb();
    eprintln!("    latencies (ms, in order): {:?}", latencies.iter().map(|d| d.as_millis()).collect::<Vec<_>>());
    drop(envoy);
    task.abort();
    eprintln!(
        "  {peers} peers × 1000 services, {}: initial sync {initial_sync:?}, {} changes, p50 {:?} p99 {:?} (agent-side apply p50 {:?}), one change sent {change_resources} resources / {change_bytes} bytes, VmHWM {} kB",
        if delta { "delta" } else { "SotW" },
        latencies.len(),
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        pct(&apply_times, 0.5),
        hwm_kb
    );
    Run { peers, delta, initial_sync, latencies, change_bytes, change_resources, hwm_kb }
}

/// One 10 × 1,000 delta run (5 changes), written nowhere: for a heap
/// profile of the agent's xDS state (`bench xds-heap` under valgrind's
/// massif; docs/xds.md, "Memory").
pub fn heap_run() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let local = ClusterIdentity::generate("bench-local");
    let roots: Vec<String> = (0..8).map(|i| ClusterIdentity::generate(&format!("bench-peer-{i}")).root_pem()).collect();
    let r = one(&rt, &local, &roots, 10, true, 5);
    eprintln!("xds-heap: 10 × 1000 delta, VmHWM {} kB", r.hwm_kb);
}

pub fn run() {
    eprintln!("== xds: push latency, memory, delta vs state of the world");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let local = ClusterIdentity::generate("bench-local");
    let roots: Vec<String> = (0..8).map(|i| ClusterIdentity::generate(&format!("bench-peer-{i}")).root_pem()).collect();
    let hwm_start = vm_hwm_kb();
    let mut runs = Vec::new();
    runs.push(one(&rt, &local, &roots, 1, true, 30));
    runs.push(one(&rt, &local, &roots, 10, true, 30));
    let hwm_10k = vm_hwm_kb();
    runs.push(one(&rt, &local, &roots, 10, false, 30));
    runs.push(one(&rt, &local, &roots, 50, true, 10));
    let mut body = String::from(
        "## xDS (issue: the agent speaks xDS)\n\nCommand: `scripts/bench.sh xds`.\n\nThe agent's xDS code (`XdsSink` building every resource with `multicloud_proto::mesh`, `XdsServer` serving ADS) runs in the benchmark process and feeds one real Envoy 1.40 sidecar (`--concurrency 1`) over loopback. Each peer exports 1,000 services (one port each: one cluster and one load assignment per service). A change is one service's ready-endpoint count (one EDS weight); latency runs from handing the agent's sink the new state to Envoy's ACK of the new EDS version (debounce of 20 ms included); 3 warm-up changes after the initial sync are not recorded (the first one meets Envoy still settling, about 1.5 s at 10,000 clusters).\n\n| peers × services | protocol | initial sync to ACK | change → ACK p50 | p99 | samples | target |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &runs {
        let target = if r.peers == 10 {
            if pct(&r.latencies, 0.99) < Duration::from_millis(500) {
                "p99 < 500 ms: met"
            } else {
                "p99 < 500 ms: **not met**"
            }
        } else if r.peers == 50 {
            if pct(&r.latencies, 0.99) < Duration::from_secs(1) {
                "p99 < 1 s: met"
            } else {
                "p99 < 1 s: **not met**"
            }
        } else {
            ""
        };
        body.push_str(&format!(
            "| {} × 1000 | {} | {} | {:.1} ms | {:.1} ms | {} | {} |\n",
            r.peers,
            if r.delta { "delta" } else { "SotW" },
            r.initial_sync.map_or("did not finish in 240 s".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            pct(&r.latencies, 0.5).as_secs_f64() * 1000.0,
            pct(&r.latencies, 0.99).as_secs_f64() * 1000.0,
            r.latencies.len(),
            target
        ));
    }
    let (d, s) = (&runs[1], &runs[2]);
    body.push_str(&format!(
        "\nPeak RSS (VmHWM) of the process holding the agent's xDS state at 10 × 1,000 services = 10,000 endpoints: **{:.1} MB** (target < 64 MB: {}); the process's peak before any xDS state was {:.1} MB. The 50-peer run raises it further to {:.1} MB.\n\n\
One-endpoint change, 10 × 1,000: delta sent **{} resource(s), {} bytes**; state of the world sent **{} resource(s), {} bytes** ({}× delta's bytes): both send only the endpoint assignment that changed (SotW sends listeners and clusters whole, endpoints as what changed: docs/xds.md).\n\n\
Where the memory goes (a heap profile, `bench xds-heap` under valgrind's massif): docs/xds.md, \"Memory\".\n",
        hwm_10k as f64 / 1024.0,
        if hwm_10k < 64 * 1024 { "met" } else { "**not met**" },
        hwm_start as f64 / 1024.0,
        runs[3].hwm_kb as f64 / 1024.0,
        d.change_resources,
        d.change_bytes,
        s.change_resources,
        s.change_bytes,
        if d.change_bytes > 0 { format!("{:.2}", s.change_bytes as f64 / d.change_bytes as f64) } else { "-".into() },
    ));
    eprintln!("{body}");
    write_section("xds", &body);
}
