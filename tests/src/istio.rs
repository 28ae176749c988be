//! Real tier, real Istio: a real istiod (pilot-discovery) per simulated
//! cluster and gateways run by a real pilot-agent with the pinned Envoy 1.40,
//! on top of the real API servers of [`crate::kube`]. Both binaries are built
//! from the Go module proxy at one pinned `istio.io/istio` version by
//! `scripts/tools.sh` (`MULTICLOUD_PILOT_DISCOVERY`, `MULTICLOUD_PILOT_AGENT`).
//!
//! [`Istiod`]: pilot-discovery outside a pod, against its cluster's API server
//! with the admin kubeconfig, every listener on the cluster's istiod address
//! (127.0.N.20, ports chosen at run time; the plaintext xDS port is off). No
//! `cacerts`: it self-signs its own root (Secret `istio-ca-secret`) and
//! publishes it as ConfigMap `istio-ca-root-cert`, so every simulated cluster
//! has its own root. Its settings, and why: docs/istio.md.
//!
//! [`IstioGateway`]: `pilot-agent proxy router` outside a pod, VM-style: its
//! own working directory holds what a pod would have mounted (the cluster's
//! root, a TokenRequest token with audience `istio-ca`, the mesh config),
//! and pilot-agent's relative socket paths land there. It gets its workload
//! certificate from istiod (CSR) and its configuration from istiod (ADS
//! through pilot-agent's xDS proxy). A `WorkloadEntry` (labels
//! `istio: ingressgateway`, the gateway's address and ServiceAccount) stands
//! in for the pod, so that a Kubernetes Service selects it as Istio does.
//!
//! Processes never outlive the test: pilot-discovery and pilot-agent are
//! spawned through [`crate::procs`]; pilot-agent runs in its own process
//! group (killed as a group on drop), and its Envoy is started through a
//! wrapper that sets `PR_SET_PDEATHSIG` (`setpriv --pdeathsig KILL`), because
//! pilot-agent does not, and an Envoy orphaned by a SIGKILLed pilot-agent
//! would keep its ports.

use crate::kube::ControlPlane;
use crate::procs::{self, Proc};
use crate::{hosts, http, paths, wait_until, SimCluster};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long istiod may take to become ready (measured here: 1-3 s on an idle
/// machine; a shared 2-core machine under a parallel build is far slower).
const ISTIOD_READY: Duration = Duration::from_secs(120);
/// How long a gateway may take to be ready (certificate + first config).
const GATEWAY_READY: Duration = Duration::from_secs(120);

/// istiod's environment beyond its defaults, each for a reason
/// (docs/istio.md, "istiod"):
pub const ISTIOD_ENV: &[(&str, &str)] = &[
    // Vanilla Envoy has no `istio.metadata_exchange` (network, HTTP and
    // upstream cluster filters): istiod would put it on every outbound
    // cluster and Envoy NACKs the whole CDS update (observed here).
    ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
    // Vanilla Envoy has no `istio.alpn` (the upstream filter that sets
    // `istio-peer-exchange`/`istio` ALPN on mTLS clusters).
    ("PILOT_ENABLE_ALPN_FILTER", "false"),
    // No injection webhook: there is no kubelet, no pod to inject, and
    // nothing should start serving a webhook if someone adds a template.
    ("INJECT_ENABLED", "false"),
];

/// Ports of one istiod, all on 127.0.N.20.
#[derive(Debug, Clone, Copy)]
pub struct IstiodAddrs {
    /// mTLS xDS + CA (Istio's 15012).
    pub secure_grpc: SocketAddr,
    /// Debug and readiness (`/ready`, `/debug/syncz`; Istio's 8080).
    pub http: SocketAddr,
    /// Webhooks (Istio's 15017; no webhook is configured here).
    pub https: SocketAddr,
    /// Prometheus `/metrics` (Istio's 15014).
    pub monitoring: SocketAddr,
    /// ControlZ (Istio's 9876, which defaults to localhost).
    pub ctrlz: SocketAddr,
}

/// One cluster's istiod.
pub struct Istiod {
    pub sim: SimCluster,
    /// The istio.io/istio snapshot it runs (its gateways run the same).
    pub build: paths::IstioBuild,
    pub cluster_id: String,
    pub addrs: IstiodAddrs,
    /// From spawn to `/ready` answering 200.
    pub started_in: Duration,
    proc: Mutex<Proc>,
    dir: tempfile::TempDir,
}

/// `cluster-N`: the cluster ID istiod and its proxies use.
pub fn cluster_id(sim: SimCluster) -> String {
    format!("cluster-{}", sim.0)
}

/// The mesh config istiod reads (and proxies get as their defaults).
/// `discoveryAddress` is what istiod derives its serving certificate's SANs
/// from: its host (an IP here) becomes an IP SAN, so proxies can verify
/// istiod by IP with no `ISTIOD_CUSTOM_HOST` and no `ISTIOD_SAN`.
pub fn istiod_mesh_config(discovery: SocketAddr) -> String {
    format!(
        "# Written by the test bed (tests/src/istio.rs); see docs/istio.md.\n\
         trustDomain: cluster.local\n\
         # No tracer in the bootstrap or listeners.\n\
         enableTracing: false\n\
         # Every proxy logs its requests (into its pilot-agent.log): what a\n\
         # failing test prints names the response code and its details.\n\
         accessLogFile: /dev/stdout\n\
         accessLogFormat: \"ACCESS [%START_TIME%] %REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% upstream=%UPSTREAM_CLUSTER% sni=%REQUESTED_SERVER_NAME%\\n\"\n\
         defaultConfig:\n  discoveryAddress: {discovery}\n"
    )
}

/// Where an istiod listens and what it calls its cluster
/// ([`Istiod::start_at`]).
#[derive(Debug, Clone)]
pub struct IstiodAt {
    pub ip: Ipv4Addr,
    pub cluster_id: String,
    /// The mesh config's `discoveryAddress` (host:port), if not istiod's own
    /// secure gRPC address.
    pub discovery_address: Option<String>,
}

/// [`istiod_mesh_config`] with `discoveryAddress` a name (istiod adds its
/// host to its serving certificate's SANs).
pub fn istiod_mesh_config_named(discovery: &str) -> String {
    istiod_mesh_config(SocketAddr::from(([0, 0, 0, 0], 1)))
        .replace("discoveryAddress: 0.0.0.0:1", &format!("discoveryAddress: {discovery}"))
}

impl Istiod {
    /// The istiod of `cp`'s cluster, started once per test binary.
    /// Stopped, and its directory removed, when the test process exits.
    pub fn shared(cp: &'static ControlPlane) -> &'static Istiod {
        static ALL: crate::Shared<Istiod> = crate::Shared::new();
        ALL.get_or_start(cp.sim, || {
            let i: &'static Istiod = Box::leak(Box::new(Istiod::start(cp)));
            crate::at_exit(move || {
                i.proc.lock().unwrap_or_else(|e| e.into_inner()).kill();
                let _ = std::fs::remove_dir_all(i.dir.path());
            });
            i
        })
    }

    /// Shared istiods of several clusters, started in parallel.
    pub fn shared_all(cps: &[&'static ControlPlane]) -> Vec<&'static Istiod> {
        std::thread::scope(|s| {
            let hs: Vec<_> = cps.iter().map(|cp| s.spawn(move || Istiod::shared(cp))).collect();
            hs.into_iter().map(|h| h.join().expect("istiod start")).collect()
        })
    }

    /// Starts istiod for `cp`'s cluster (Istio's CRDs and istio-system first)
    /// and waits for `/ready`.
    pub fn start(cp: &ControlPlane) -> Istiod {
        Istiod::start_with_env(cp, ISTIOD_ENV)
    }

    /// [`Istiod::start`] with `env` instead of [`ISTIOD_ENV`] (e.g. without
    /// the switches, to show what vanilla Envoy then refuses).
    pub fn start_with_env(cp: &ControlPlane, env: &[(&str, &str)]) -> Istiod {
        Istiod::start_with(cp, env, false, false)
    }

    /// [`Istiod::start_with_env`]; with `mesh_in_configmap`, istiod reads its
    /// mesh config as it does in a cluster, from ConfigMap `istio` in
    /// istio-system (written here, key `mesh`; no file), and so also the
    /// ConfigMap named by `SHARED_MESH_CONFIG` if `env` sets it. With
    /// `resolve_peers`, istiod resolves peers' API hosts ([`with_peer_names`]).
    pub fn start_with(cp: &ControlPlane, env: &[(&str, &str)], mesh_in_configmap: bool, resolve_peers: bool) -> Istiod {
        Istiod::start_build(cp, &paths::IstioBuild::current(), env, mesh_in_configmap, resolve_peers)
    }

    /// [`Istiod::start_with`] at the istio.io/istio snapshot `build` (its own
    /// CRDs applied over the pinned ones).
    pub fn start_build(
        cp: &ControlPlane,
        build: &paths::IstioBuild,
        env: &[(&str, &str)],
        mesh_in_configmap: bool,
        resolve_peers: bool,
    ) -> Istiod {
        let at = IstiodAt { ip: cp.sim.ip(hosts::ISTIOD), cluster_id: cluster_id(cp.sim), discovery_address: None };
        Istiod::start_at(cp, build, env, mesh_in_configmap, resolve_peers, &at)
    }

    /// [`Istiod::start_build`] with its listeners on `at.ip`, cluster ID
    /// `at.cluster_id` and, when given, `at.discovery_address` as the mesh
    /// config's `discoveryAddress` (the node tier: pods reach this istiod
    /// through Service `istiod`, as in a cluster).
    pub fn start_at(
        cp: &ControlPlane,
        build: &paths::IstioBuild,
        env: &[(&str, &str)],
        mesh_in_configmap: bool,
        resolve_peers: bool,
        at: &IstiodAt,
    ) -> Istiod {
        cp.install_prerequisites();
        if *build != paths::IstioBuild::current() {
            let crds = std::fs::read_to_string(build.crds()).unwrap_or_else(|e| panic!("{}: {e}", build.crds().display()));
            cp.apply(&crds).unwrap_or_else(|e| panic!("Istio CRDs of {}: {e}", build.version));
            cp.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=120s"]);
        }
        let sim = cp.sim;
        let ip = at.ip;
        let port = || SocketAddr::from((ip, crate::fixtures::free_port(ip)));
        let addrs = IstiodAddrs { secure_grpc: port(), http: port(), https: port(), monitoring: port(), ctrlz: port() };
        let dir = tempfile::Builder::new().prefix(&format!("multicloud-istiod-{}-", sim.0)).tempdir().expect("tempdir");
        let mesh = match &at.discovery_address {
            Some(d) => istiod_mesh_config_named(d),
            None => istiod_mesh_config(addrs.secure_grpc),
        };
        if mesh_in_configmap {
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio", "namespace": "istio-system"},
                "data": {"mesh": mesh},
            });
            cp.apply(&cm.to_string()).expect("ConfigMap istio-system/istio");
        } else {
            std::fs::write(dir.path().join("mesh.yaml"), mesh).expect("write mesh config");
        }
        let cluster_id = at.cluster_id.clone();
        let log = std::fs::File::create(dir.path().join("istiod.log")).expect("log");
        let mut cmd =
            if resolve_peers { with_peer_names(&paths::pilot_discovery(), dir.path()) } else { Command::new(paths::pilot_discovery()) };
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().copied())
            .arg("discovery")
            .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
            .arg("--meshConfig=mesh.yaml")
            .arg(format!("--clusterID={cluster_id}"))
            // No plaintext xDS: every proxy authenticates istiod by its root.
            .arg("--grpcAddr=")
            .arg(format!("--secureGRPCAddr={}", addrs.secure_grpc))
            .arg(format!("--httpAddr={}", addrs.http))
            .arg(format!("--httpsAddr={}", addrs.https))
            .arg(format!("--monitoringAddr={}", addrs.monitoring))
            .arg(format!("--ctrlz_address={ip}"))
            .arg(format!("--ctrlz_port={}", addrs.ctrlz.port()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let t0 = Instant::now();
        let proc = procs::spawn(cmd).expect("spawn pilot-discovery");
        let mut istiod = Istiod { sim, build: build.clone(), cluster_id, addrs, started_in: Duration::ZERO, proc: Mutex::new(proc), dir };
        istiod.wait_ready();
        istiod.started_in = t0.elapsed();
        istiod
    }

    fn wait_ready(&self) {
        wait_until(&format!("istiod of cluster {} /ready", self.sim.0), ISTIOD_READY, || {
            if let Some(st) = self.proc.lock().unwrap_or_else(|e| e.into_inner()).try_wait() {
                self.dump_log();
                panic!("istiod of cluster {} exited: {st}", self.sim.0);
            }
            match self.get("/ready") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e),
            }
        });
    }

    /// GET on istiod's debug/readiness port.
    pub fn get(&self, path: &str) -> Result<http::Resp, String> {
        http::try_request("GET", &format!("http://{}{path}", self.addrs.http), &[])
    }

    /// `/debug/syncz`: per connected proxy, what was sent and ACKed, and the
    /// last NACK (`resources.<type>.lastError`).
    pub fn syncz(&self) -> serde_json::Value {
        let r = self.get("/debug/syncz").unwrap_or_else(|e| panic!("syncz: {e}"));
        r.json()
    }

    /// Waits (`what`, at most `timeout`) until `/debug/syncz` shows `proxy`
    /// with every type in `types` sent and ACKed at the same version; its
    /// syncz entry.
    pub fn wait_synced(&self, what: &str, proxy: &str, types: &[&str], timeout: Duration) -> serde_json::Value {
        wait_until(what, timeout, || {
            let all = self.syncz();
            let e = all.as_array().and_then(|a| a.iter().find(|e| e["proxy"] == proxy).cloned());
            let Some(e) = e else { return Err(format!("{proxy} not connected: {all}")) };
            let res = e["resources"].as_object().cloned().unwrap_or_default();
            for t in types {
                match res.iter().find(|(k, _)| k.ends_with(&format!(".{t}"))).map(|(_, v)| v) {
                    Some(r) if r["sent"] == r["acked"] && r["sent"].is_string() => {}
                    other => return Err(format!("{t}: {other:?} in {e}")),
                }
            }
            Ok(e)
        })
    }

    /// istiod's Prometheus metrics (monitoring port).
    pub fn metrics(&self) -> String {
        http::get(&format!("http://{}/metrics", self.addrs.monitoring)).text()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Resident set size now, in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("istiod.log")).unwrap_or_default()
    }

    fn dump_log(&self) {
        eprint!("{}", tail(&format!("istiod of cluster {}", self.sim.0), &self.log(), 60));
    }

    /// `Some(status)` once istiod has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner()).try_wait()
    }

    /// Stops istiod (SIGTERM, then SIGKILL after `grace`); `Some(status)`
    /// when it exited by itself within `grace`.
    pub fn stop(&self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner()).terminate(grace)
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        self.proc.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }
}

fn peer_addresses() -> &'static Mutex<std::collections::BTreeMap<u8, Ipv4Addr>> {
    static ADDRS: std::sync::OnceLock<Mutex<std::collections::BTreeMap<u8, Ipv4Addr>>> = std::sync::OnceLock::new();
    ADDRS.get_or_init(Default::default)
}

/// Makes [`with_peer_names`] resolve cluster `sim`'s hosts to `ip` instead
/// of its loopback gateway address (the node tier's cluster, whose gateway
/// is a pod behind a load-balancer address); for processes spawned after.
pub fn set_peer_address(sim: SimCluster, ip: Ipv4Addr) {
    peer_addresses().lock().unwrap_or_else(|e| e.into_inner()).insert(sim.0, ip);
}

/// `program` run in a mount namespace of its own whose `/etc/hosts`
/// (written into `dir`) resolves every simulated cluster's API and metadata
/// hosts (`api.cluster-<n>.example`, `metadata.cluster-<n>.example`) to its
/// gateway address (127.0.n.1): the DNS a real cluster has for a peer's
/// gateway, which a loopback test bed has not. Nothing else changes for the program (same network, same files).
pub fn with_peer_names(program: &Path, dir: &Path) -> Command {
    // Checked once, so that a machine without it fails with the reason.
    static USABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let usable = USABLE.get_or_init(|| {
        let out = Command::new("unshare").args(["--mount", "--propagation", "private", "true"]).output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    if let Err(e) = usable {
        panic!(
            "the real-Istio mesh needs `unshare --mount` (util-linux, as root or with CAP_SYS_ADMIN) to give the processes that \
             resolve peers' hosts a private /etc/hosts; here it fails: {e}"
        );
    }
    let hosts_file = dir.join("hosts");
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    let overrides = peer_addresses().lock().unwrap_or_else(|e| e.into_inner()).clone();
    for n in 1..=254u8 {
        let gw = overrides.get(&n).copied().unwrap_or(Ipv4Addr::new(127, 0, n, hosts::GATEWAY));
        text.push_str(&format!("{gw} api.cluster-{n}.example metadata.cluster-{n}.example\n"));
    }
    std::fs::write(&hosts_file, text).expect("write hosts");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""])
        .arg(&hosts_file)
        .arg(program);
    c
}

/// What the agent's DaemonSet gives it to ask istiod's CA for its serving
/// certificate (`--istio-ca-address` and the pod's files), for a process
/// outside a pod: istiod's secure gRPC address, the root it published (the
/// `istio-ca-root-cert` ConfigMap volume) and a TokenRequest token of the
/// agent's ServiceAccount with audience `istio-ca` (the projected token),
/// written into `dir`.
pub fn agent_ca_args(cp: &ControlPlane, istiod: &Istiod, dir: &Path) -> Vec<String> {
    let root = dir.join("istio-ca-root.pem");
    let token = dir.join("istio-ca-token");
    std::fs::write(&root, published_root(cp, ISTIOD_READY)).expect("write root");
    let t = cp.kubectl_ok(&["create", "token", "istio-multicloud-agent", "-n", "istio-system", "--audience=istio-ca", "--duration=3600s"]);
    std::fs::write(&token, t.trim()).expect("write token");
    vec![
        format!("--istio-ca-address={}", istiod.addrs.secure_grpc),
        format!("--istio-ca-root={}", root.display()),
        format!("--istio-ca-token={}", token.display()),
        format!("--istio-cluster-id={}", istiod.cluster_id),
    ]
}

/// The root istiod published in `istio-system` (ConfigMap
/// `istio-ca-root-cert`, key `root-cert.pem`), once it is there.
pub fn published_root(cp: &ControlPlane, timeout: Duration) -> String {
    wait_until(&format!("cluster {}: ConfigMap istio-system/istio-ca-root-cert", cp.sim.0), timeout, || {
        cp.get_json(&["configmap", "istio-ca-root-cert", "-n", "istio-system"])
            .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_string))
            .filter(|pem| pem.contains("BEGIN CERTIFICATE"))
            .ok_or_else(|| "not yet".to_string())
    })
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn tail(what: &str, text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!("----- {what} (last {n} lines) -----\n");
    for l in &lines[lines.len().saturating_sub(n)..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The gateway's ServiceAccount, as Istio's gateway chart names it.
pub const GATEWAY_SA: &str = "istio-ingressgateway-service-account";

/// What a gateway run by pilot-agent is given.
#[derive(Clone)]
pub struct GatewayOptions {
    /// Pod-like name (POD_NAME; the proxy id is `<name>.istio-system`).
    pub name: String,
    /// Labels (as the pod's would be): istiod selects Gateways, EnvoyFilters
    /// and WasmPlugins by these; the WorkloadEntry carries them too.
    pub labels: Vec<(String, String)>,
    /// More ports of the `istio-ingressgateway` Service: (name, port,
    /// targetPort). istiod binds a Gateway server's listener on the
    /// Service's targetPort for the server's port (443 -> a run-time port),
    /// as in a real cluster (443 -> 8443).
    pub service_ports: Vec<(String, u16, u16)>,
    /// Host number in the cluster's range (the proxy's address).
    pub host: u8,
    /// The Service that selects it (`istio-ingressgateway`), or none.
    pub service: Option<String>,
    /// Wait for pilot-agent's readiness (Envoy ready with its first
    /// configuration) before returning.
    pub wait_ready: bool,
    /// More pilot-agent environment (after the defaults of `gateway_env`).
    pub env: Vec<(String, String)>,
    /// The pod's namespace (POD_NAMESPACE; the WorkloadEntry's too).
    pub namespace: String,
    /// The pod's ServiceAccount: its workload identity.
    pub service_account: String,
    /// `router` (a gateway, Istio's gateway chart) or `sidecar` (a workload's
    /// proxy, `ISTIO_META_INTERCEPTION_MODE=NONE`: no iptables, listeners
    /// from a `Sidecar` resource's ingress and egress, bound to its addresses).
    pub proxy_type: &'static str,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            name: "istio-ingressgateway-0".into(),
            labels: vec![("istio".into(), "ingressgateway".into())],
            service_ports: vec![],
            host: hosts::GATEWAY,
            service: Some("istio-ingressgateway".into()),
            wait_ready: true,
            env: vec![],
            namespace: "istio-system".into(),
            service_account: GATEWAY_SA.into(),
            proxy_type: "router",
        }
    }
}

/// Ports of one pilot-agent-run gateway.
#[derive(Debug, Clone, Copy)]
pub struct GatewayPorts {
    /// Envoy's admin (bound on 127.0.0.1 by Istio's bootstrap template).
    pub admin: u16,
    /// pilot-agent's status server (`/healthz/ready`, merged `/stats/prometheus`;
    /// Istio's 15020, bound on every address).
    pub agent_status: u16,
    /// Envoy's own health listener (Istio's 15021, bound on 0.0.0.0).
    pub envoy_status: u16,
    /// Envoy's Prometheus listener (Istio's 15090, bound on 0.0.0.0).
    pub envoy_prometheus: u16,
}

/// An ingress gateway: `pilot-agent proxy router` with Envoy 1.40.
pub struct IstioGateway {
    pub sim: SimCluster,
    pub ip: Ipv4Addr,
    pub ports: GatewayPorts,
    pub opts: GatewayOptions,
    /// From spawn to pilot-agent's `/healthz/ready` answering 200.
    pub started_in: Duration,
    proc: Proc,
    pgid: Option<i32>,
    dir: tempfile::TempDir,
}

/// The proxy config the gateway's pilot-agent reads (mesh config file,
/// `defaultConfig`), each field for a reason (docs/istio.md, "Gateways").
pub fn gateway_mesh_config(istiod: &Istiod, dir: &Path, envoy_wrapper: &Path, ports: &GatewayPorts) -> String {
    let template = istiod.build.bootstrap_template();
    format!(
        "# Written by the test bed (tests/src/istio.rs); see docs/istio.md.\n\
         trustDomain: cluster.local\n\
         enableTracing: false\n\
         defaultConfig:\n\
         \x20 discoveryAddress: {discovery}\n\
         \x20 # Envoy 1.40 (through a wrapper that ties it to pilot-agent's life).\n\
         \x20 binaryPath: {binary}\n\
         \x20 # Istio's bootstrap template from the pinned module (the image has it at\n\
         \x20 # /var/lib/istio/envoy/envoy_bootstrap_tmpl.json).\n\
         \x20 proxyBootstrapTemplatePath: {template}\n\
         \x20 # Absolute, so that Envoy's command line (-c <configPath>/envoy-rev.json)\n\
         \x20 # names this directory (scripts/test.sh looks for leftovers by it).\n\
         \x20 configPath: {config_path}\n\
         \x20 proxyAdminPort: {admin}\n\
         \x20 statusPort: {status}\n\
         \x20 # Two workers, not one per host CPU.\n\
         \x20 concurrency: 2\n\
         \x20 # Shut down promptly when stopped.\n\
         \x20 drainDuration: 1s\n\
         \x20 terminationDrainDuration: 1s\n",
        discovery = istiod.addrs.secure_grpc,
        binary = envoy_wrapper.display(),
        template = template.display(),
        config_path = dir.join("etc/istio/proxy").display(),
        admin = ports.admin,
        status = ports.agent_status,
    )
}

impl IstioGateway {
    /// Waits until `https://HOST/metadata/public/public.json` answers 200
    /// through this gateway's HTTPS port (the Service's `https` targetPort;
    /// TLS verified against `ca_pem`, SNI `host`) and returns the document.
    /// `diag` says what to look at while it does not.
    pub fn wait_public_json(&self, host: &str, ca_pem: &str, timeout: Duration, diag: impl Fn() -> String) -> serde_json::Value {
        let https = self.opts.service_ports.iter().find(|(n, _, _)| n == "https").map(|(_, _, t)| *t).expect("https port");
        let addr = SocketAddr::from((self.ip, https));
        wait_until(&format!("https://{host}/metadata/public/public.json through the gateway at {addr}"), timeout, || {
            match crate::mtls::get_from(addr, host, Some(ca_pem), None, host, "/metadata/public/public.json", &[]) {
                crate::mtls::Outcome::Http(200, body) => {
                    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(body.len().saturating_sub(1))];
                    serde_json::from_str::<serde_json::Value>(json).map_err(|e| format!("{e}: {body}"))
                }
                other => Err(format!("{other:?}; {}", diag())),
            }
        })
    }

    /// Starts a gateway of `cp`'s cluster against `istiod`: its
    /// ServiceAccount, a token for it, its WorkloadEntry and the
    /// `istio-ingressgateway` Service (as admin), its working directory, then
    /// pilot-agent. Waits until pilot-agent says ready (Envoy has its
    /// certificate and first configuration).
    pub fn start(cp: &ControlPlane, istiod: &Istiod, opts: GatewayOptions) -> IstioGateway {
        let sim = cp.sim;
        let ip = sim.ip(opts.host);
        let any = Ipv4Addr::UNSPECIFIED;
        let ports = GatewayPorts {
            admin: crate::fixtures::free_port(Ipv4Addr::LOCALHOST),
            agent_status: crate::fixtures::free_port(any),
            envoy_status: crate::fixtures::free_port(any),
            envoy_prometheus: crate::fixtures::free_port(any),
        };
        let labels_yaml = opts.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
        let mut svc_ports = vec![format!("{{name: status-port, port: 15021, targetPort: {}}}", ports.envoy_status)];
        svc_ports.extend(opts.service_ports.iter().map(|(n, p, t)| format!("{{name: {n}, port: {p}, targetPort: {t}}}")));
        // The pod's stand-ins: its ServiceAccount, and a WorkloadEntry with
        // its address, labels and ServiceAccount, which a Service selects
        // like a pod and which istiod matches to the proxy by address. The
        // Role is the one Istio's gateway chart gives the gateway: istiod
        // serves a Gateway's `credentialName` Secret to a proxy only if a
        // SubjectAccessReview says its ServiceAccount may list Secrets there.
        let (ns, sa) = (opts.namespace.as_str(), opts.service_account.as_str());
        let mut objects = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n");
        if opts.proxy_type == "router" {
            objects.push_str(&format!(
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {sa}, namespace: {ns}}}\n\
                 rules: [{{apiGroups: [''], resources: [secrets], verbs: [get, watch, list]}}]\n\
                 ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}, namespace: {ns}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {sa}}}\n\
                 subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
            ));
        }
        // On the proxy's network, if it has one (as a WorkloadGroup's template
        // would put it): a peer's istiod, which reads this WorkloadEntry
        // through the remote secret, then knows the endpoint is behind this
        // cluster's gateway.
        let network = opts.env.iter().find(|(k, _)| k == "ISTIO_META_NETWORK").map(|(_, v)| format!(", network: {v}")).unwrap_or_default();
        objects.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{{labels_yaml}}}}}\n\
             spec: {{address: {ip}, labels: {{{labels_yaml}}}, serviceAccount: {sa}{network}}}\n",
            name = opts.name,
        ));
        cp.apply(&objects).expect("proxy Namespace, ServiceAccount, (Role), WorkloadEntry");
        if let Some(service) = &opts.service {
            cp.apply(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {ns}, labels: {{{labels_yaml}}}}}\n\
                 spec: {{type: LoadBalancer, selector: {{{labels_yaml}}}, ports: [{ports}]}}\n",
                ports = svc_ports.join(", "),
            ))
            .expect("gateway Service");
        }

        let dir = tempfile::Builder::new().prefix(&format!("multicloud-istio-gw-{}-", sim.0)).tempdir().expect("tempdir");
        let d = dir.path();
        // What the pod would have mounted, at pilot-agent's relative paths.
        let root = published_root(cp, ISTIOD_READY);
        let token = cp.kubectl_ok(&["create", "token", sa, "-n", ns, "--audience=istio-ca", "--duration=3600s"]);
        for (rel, text) in [("var/run/secrets/istio/root-cert.pem", root.as_str()), ("var/run/secrets/tokens/istio-token", token.trim())] {
            let p = d.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
        }
        let wrapper = d.join("envoy");
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\n# Envoy dies with pilot-agent (which does not set a death signal itself).\nexec setpriv --pdeathsig KILL -- {} \"$@\"\n", paths::envoy().display()),
        )
        .expect("write envoy wrapper");
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        std::fs::create_dir_all(d.join("etc/istio/config")).expect("mkdir");
        std::fs::create_dir_all(d.join("out")).expect("mkdir");
        std::fs::write(d.join("etc/istio/config/mesh"), gateway_mesh_config(istiod, d, &wrapper, &ports)).expect("write mesh");
        let labels_json = serde_json::to_string(&opts.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()).expect("json");

        let log = std::fs::File::create(d.join("pilot-agent.log")).expect("log");
        let mut cmd = Command::new(&istiod.build.agent);
        cmd.current_dir(d)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(gateway_env(sim, ip, &opts, &ports, &labels_json))
            .envs(opts.env.iter().cloned())
            .args(["proxy", opts.proxy_type, "--proxyLogLevel=warning"])
            // Absolute (the default is the same file, relative): names the
            // directory on the command line.
            .arg(format!("--meshConfig={}", d.join("etc/istio/config/mesh").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let t0 = Instant::now();
        let proc = procs::spawn(cmd).expect("spawn pilot-agent");
        let pgid = proc.id().and_then(|p| i32::try_from(p).ok());
        let mut gw = IstioGateway { sim, ip, ports, opts: opts.clone(), started_in: Duration::ZERO, proc, pgid, dir };
        if gw.opts.wait_ready {
            gw.wait_ready();
        }
        gw.started_in = t0.elapsed();
        gw
    }

    fn wait_ready(&mut self) {
        let what = format!("gateway of cluster {} (pilot-agent /healthz/ready)", self.sim.0);
        let url = format!("http://127.0.0.1:{}/healthz/ready", self.ports.agent_status);
        let proc = &mut self.proc;
        let dir = self.dir.path().to_path_buf();
        wait_until(&what, GATEWAY_READY, || {
            if let Some(st) = proc.try_wait() {
                let log = std::fs::read_to_string(dir.join("pilot-agent.log")).unwrap_or_default();
                eprint!("{}", tail("pilot-agent", &log, 60));
                panic!("pilot-agent exited: {st}");
            }
            match http::try_request("GET", &url, &[]) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e),
            }
        });
    }

    /// The proxy id istiod knows it by.
    pub fn proxy_id(&self) -> String {
        format!("{}.{}", self.opts.name, self.opts.namespace)
    }

    /// GET on Envoy's admin API.
    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = http::try_request("GET", &format!("http://127.0.0.1:{}{path}", self.ports.admin), &[])?;
        if r.status == 200 {
            Ok(r.text())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    }

    pub fn config_dump(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/config_dump?include_eds").expect("config_dump")).expect("config_dump json")
    }

    /// Envoy's counters whose name ends with `suffix` (e.g. `update_rejected`).
    pub fn stats_ending(&self, suffix: &str) -> Vec<(String, u64)> {
        let text = self.admin_get("/stats").expect("stats");
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.ends_with(suffix))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect()
    }

    /// The workload certificate chain pilot-agent got from istiod
    /// (`OUTPUT_CERTS` copy), once written.
    pub fn workload_cert_pem(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("out/cert-chain.pem")).ok().filter(|s| s.contains("BEGIN CERTIFICATE"))
    }

    /// The private key of [`IstioGateway::workload_cert_pem`].
    pub fn workload_key_pem(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("out/key.pem")).ok().filter(|s| s.contains("PRIVATE KEY"))
    }

    /// The pid of pilot-agent's Envoy, if running.
    pub fn envoy_pid(&self) -> Option<u32> {
        let agent = self.proc.id()?;
        // A child is listed under the thread that forked it (any of Go's).
        let tasks = std::fs::read_dir(format!("/proc/{agent}/task")).ok()?;
        let children: Vec<u32> = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).collect::<Vec<_>>())
            .collect();
        children.into_iter().find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim() == "envoy").unwrap_or(false))
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.proc.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pilot-agent.log")).unwrap_or_default()
    }

    /// Kills pilot-agent and its Envoy (the whole process group).
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) on the process group we created for our child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        self.proc.kill();
    }
}

impl Drop for IstioGateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprint!("{}", tail(&format!("gateway of cluster {} pilot-agent", self.sim.0), &self.log(), 80));
        }
        self.kill();
    }
}

/// pilot-agent's environment: what the pod spec's env and downward API give
/// it in Istio's gateway chart, plus the ports moved off their defaults.
fn gateway_env(sim: SimCluster, ip: Ipv4Addr, opts: &GatewayOptions, ports: &GatewayPorts, labels_json: &str) -> Vec<(String, String)> {
    [
        ("POD_NAME", opts.name.clone()),
        ("POD_NAMESPACE", opts.namespace.clone()),
        ("SERVICE_ACCOUNT", opts.service_account.clone()),
        // The proxy's address: istiod matches the WorkloadEntry by it.
        ("INSTANCE_IP", ip.to_string()),
        ("ISTIO_META_CLUSTER_ID", cluster_id(sim)),
        // The pod's labels (a pod gets them from the downward API file).
        ("ISTIO_METAJSON_LABELS", labels_json.to_string()),
        // Envoy's own health and Prometheus listeners bind 0.0.0.0: off their
        // fixed defaults (15021, 15090), or two gateways collide.
        ("ENVOY_STATUS_PORT", ports.envoy_status.to_string()),
        ("ENVOY_PROMETHEUS_PORT", ports.envoy_prometheus.to_string()),
        // A copy of the workload certificate istiod signed, for the test to read.
        ("OUTPUT_CERTS", "./out".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
