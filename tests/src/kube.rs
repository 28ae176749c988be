//! Real Kubernetes control planes for the real tier.
//!
//! Per simulated cluster: a real etcd and a real kube-apiserver (pinned
//! versions built from the Go module proxy by `scripts/tools.sh`, cached
//! outside the checkout), both on the cluster's own loopback range
//! (127.0.N.10 the API server, 127.0.N.11 etcd). Everything they need is made
//! at run time: a CA and serving certificate, an admin client certificate
//! (`O=system:masters`), and the ServiceAccount signing key (so TokenRequest
//! and TokenReview work). There is no kube-controller-manager and no kubelet:
//! what those would write (EndpointSlices, a Service's load-balancer status)
//! a test writes itself, as admin, and says so.
//!
//! The processes never outlive the test process ([`crate::procs`]); a
//! [`ControlPlane`] kills them when dropped. [`ControlPlane::shared`] hands
//! every test of one test binary the same control plane per cluster, so a
//! binary starts each cluster once (tests on it use their own namespaces or
//! object names).

use crate::procs::{self, Proc};
use crate::{paths, wait_until, SimCluster};
use base64::Engine as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Host numbers of the control plane in a cluster's range.
pub const APISERVER_HOST: u8 = crate::hosts::APISERVER;
pub const ETCD_HOST: u8 = crate::hosts::ETCD;

/// How long a fresh control plane may take to say `/readyz` ok (measured
/// here: a few seconds; a shared 2-core machine under a parallel build is
/// much slower).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// One cluster's etcd and kube-apiserver.
pub struct ControlPlane {
    pub sim: SimCluster,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    etcd: Mutex<Proc>,
    apiserver: Mutex<Proc>,
    port: u16,
    /// The CA that signed the API server's serving certificate (PEM).
    pub ca_pem: String,
    prerequisites: OnceLock<()>,
}

struct Pki {
    ca_pem: String,
    serving: (String, String),
    admin: (String, String),
    sa_key_pem: String,
    sa_pub_pem: String,
    /// With a node: (file stem, certificate, key) of the node components'
    /// client identities.
    clients: Vec<(String, String, String)>,
}

/// A control plane that a real node joins (tests/src/node.rs): the API
/// server also listens where the node's pods reach it, and writes the
/// `kubernetes` Service's endpoint there.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// The address the API server advertises (the node bridge's, where pods
    /// reach the host).
    pub advertise: Ipv4Addr,
    /// The `kubernetes` Service's ClusterIP (the first of the service range).
    pub service_ip: Ipv4Addr,
    /// The node's name: its kubelet's identity is `system:node:<name>`.
    pub node_name: String,
}

/// The service range every test-bed API server has.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

fn pki(ip: Ipv4Addr, node: Option<&NodeNet>) -> Pki {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("test Kubernetes CA {ip}"));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = p.self_signed(&ca_key).expect("ca");
    let leaf = |sans: Vec<String>, cn: &str, org: Option<&str>, server: bool| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = rcgen::CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, o);
        }
        p.extended_key_usages =
            vec![if server { rcgen::ExtendedKeyUsagePurpose::ServerAuth } else { rcgen::ExtendedKeyUsagePurpose::ClientAuth }];
        let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let mut sans = vec![ip.to_string(), "localhost".into(), "kubernetes.default.svc".into(), "kubernetes.default.svc.cluster.local".into()];
    if let Some(n) = node {
        sans.extend([n.advertise.to_string(), n.service_ip.to_string(), "kubernetes".into(), "kubernetes.default".into()]);
    }
    let serving = leaf(sans, "kube-apiserver", None, true);
    let admin = leaf(vec![], "test-admin", Some("system:masters"), false);
    let sa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("sa key");
    // The identities Kubernetes' default RBAC (and the Node authorizer) know.
    let clients = node
        .map(|n| {
            [
                ("kubelet", format!("system:node:{}", n.node_name), Some("system:nodes")),
                ("kube-controller-manager", "system:kube-controller-manager".to_string(), None),
                ("kube-scheduler", "system:kube-scheduler".to_string(), None),
                ("kube-proxy", "system:kube-proxy".to_string(), None),
            ]
            .into_iter()
            .map(|(stem, cn, org)| {
                let (c, k) = leaf(vec![], &cn, org, false);
                (stem.to_string(), c, k)
            })
            .collect()
        })
        .unwrap_or_default();
    Pki { ca_pem: ca.pem(), serving, admin, sa_key_pem: sa.serialize_pem(), sa_pub_pem: sa.public_key_pem(), clients }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The API server's audit policy: requests by the API proxy's
/// ServiceAccount (what peers send through the API proxy), at Metadata level
/// (who, verb, URI, status; no bodies), when the response is complete;
/// its Secret requests with the response body (a list's items), so that a
/// test can show that no Secret was ever returned; and the agent's requests
/// at Metadata level (each replica has its own User-Agent).
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
- level: RequestResponse\n  users: ['system:serviceaccount:istio-system:istio-multicloud-api-proxy']\n  resources: [{group: '', resources: [secrets]}]\n\
- level: Metadata\n  users: ['system:serviceaccount:istio-system:istio-multicloud-api-proxy', 'system:serviceaccount:istio-system:istio-multicloud-agent']\n- level: None\n";

impl ControlPlane {
    /// The control plane of `sim`, started once per test binary and shared
    /// by its tests.
    ///
    /// Clusters start concurrently (the registry's lock is not held while one
    /// starts). A shared control plane is never dropped (it is `'static`), so
    /// its processes are stopped and its directory (etcd's data, ~120 MB) is
    /// removed when the test process exits ([`crate::at_exit`]).
    pub fn shared(sim: SimCluster) -> &'static ControlPlane {
        static PLANES: crate::Shared<ControlPlane> = crate::Shared::new();
        PLANES.get_or_start(sim, || {
            let p: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start(sim)));
            crate::at_exit(move || {
                p.apiserver.lock().unwrap_or_else(|e| e.into_inner()).kill();
                p.etcd.lock().unwrap_or_else(|e| e.into_inner()).kill();
                let _ = std::fs::remove_dir_all(&p.dir);
            });
            p
        })
    }

    /// Shared control planes of several clusters, started in parallel.
    pub fn shared_all(sims: &[SimCluster]) -> Vec<&'static ControlPlane> {
        std::thread::scope(|s| {
            let handles: Vec<_> = sims.iter().map(|sim| s.spawn(move || ControlPlane::shared(*sim))).collect();
            handles.into_iter().map(|h| h.join().expect("control plane start")).collect()
        })
    }

    /// Starts etcd and kube-apiserver for `sim` and waits for `/readyz`.
    pub fn start(sim: SimCluster) -> ControlPlane {
        ControlPlane::start_with(sim, None)
    }

    /// [`ControlPlane::start`] for a cluster that a real node joins
    /// (tests/src/node.rs): the API server listens on every address (so
    /// that pods reach it at `node.advertise`), advertises `node.advertise`
    /// as the `kubernetes` Service's endpoint, authorizes kubelets with the
    /// Node authorizer, lets ServiceAccount admission mount tokens, and
    /// kubeconfigs for the node's components are written
    /// ([`ControlPlane::component_kubeconfig`]).
    pub fn start_for_node(sim: SimCluster, node: &NodeNet) -> ControlPlane {
        ControlPlane::start_with(sim, Some(node))
    }

    fn start_with(sim: SimCluster, node: Option<&NodeNet>) -> ControlPlane {
        let tmp = tempfile::Builder::new().prefix(&format!("multicloud-kube-{}-", sim.0)).tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let ip = sim.ip(APISERVER_HOST);
        let pki = pki(ip, node);
        for (name, text) in [
            ("ca.crt", &pki.ca_pem),
            ("serving.crt", &pki.serving.0),
            ("serving.key", &pki.serving.1),
            ("sa.key", &pki.sa_key_pem),
            ("sa.pub", &pki.sa_pub_pem),
            ("audit-policy.yaml", &AUDIT_POLICY.to_string()),
        ] {
            std::fs::write(dir.join(name), text).expect("write pki");
        }
        // With a node the API server listens on every address: its port
        // must be free on all of them.
        let port = crate::fixtures::free_port(if node.is_some() { Ipv4Addr::UNSPECIFIED } else { ip });
        let admin = kubeconfig(&format!("https://{ip}:{port}"), &pki.ca_pem, User::Cert(&pki.admin.0, &pki.admin.1));
        std::fs::write(dir.join("admin.kubeconfig"), admin).expect("write kubeconfig");
        for (stem, c, k) in &pki.clients {
            let text = kubeconfig(&format!("https://{ip}:{port}"), &pki.ca_pem, User::Cert(c, k));
            std::fs::write(dir.join(format!("{stem}.kubeconfig")), text).expect("write kubeconfig");
        }
        if let Some(n) = node {
            // spawn_apiserver reads it (also on a restart).
            std::fs::write(dir.join("node-advertise"), n.advertise.to_string()).expect("write");
            let (c, k) = &pki.admin;
            std::fs::write(dir.join("kubelet-client.crt"), c).expect("write");
            std::fs::write(dir.join("kubelet-client.key"), k).expect("write");
        }
        let etcd_ip = sim.ip(ETCD_HOST);
        let (client_port, peer_port) = (crate::fixtures::free_port(etcd_ip), crate::fixtures::free_port(etcd_ip));
        std::fs::write(dir.join("etcd-url"), format!("http://{etcd_ip}:{client_port}")).expect("write");
        let etcd = spawn_etcd(&dir, etcd_ip, client_port, peer_port);
        let apiserver = spawn_apiserver(&dir, ip, port);
        let cp = ControlPlane {
            sim,
            dir,
            _tmp: Some(tmp),
            etcd: Mutex::new(etcd),
            apiserver: Mutex::new(apiserver),
            port,
            ca_pem: pki.ca_pem,
            prerequisites: OnceLock::new(),
        };
        cp.wait_ready();
        cp
    }

    /// The audit events of requests made as `user` (JSON lines of
    /// `--audit-log-path`; only deploy/'s API proxy ServiceAccount is logged).
    pub fn audit(&self, user: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|e| e["user"]["username"] == user).collect()
    }

    /// `https://127.0.N.10:PORT`.
    pub fn server(&self) -> String {
        format!("https://{}:{}", self.sim.ip(APISERVER_HOST), self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((self.sim.ip(APISERVER_HOST), self.port))
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The kubeconfig of a node component (`kubelet`, `kube-controller-manager`,
    /// `kube-scheduler`, `kube-proxy`): a client certificate for the identity
    /// Kubernetes' default RBAC names (`system:node:<node>` in `system:nodes`
    /// for the kubelet). Only for [`ControlPlane::start_for_node`].
    pub fn component_kubeconfig(&self, component: &str) -> PathBuf {
        let p = self.dir.join(format!("{component}.kubeconfig"));
        assert!(p.exists(), "{} missing: not a control plane started for a node", p.display());
        p
    }

    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the API server answers `/readyz` with ok.
    pub fn wait_ready(&self) {
        let name = format!("kube-apiserver of cluster {} /readyz", self.sim.0);
        wait_until(&name, READY_TIMEOUT, || {
            if let Some(st) = self.apiserver.lock().unwrap_or_else(|e| e.into_inner()).try_wait() {
                self.dump_logs();
                panic!("kube-apiserver of cluster {} exited: {st}", self.sim.0);
            }
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        });
    }

    /// Kills the API server (SIGKILL) and starts it again on the same port and
    /// etcd; waits for `/readyz`. Clients see their connections drop.
    pub fn restart_apiserver(&self) {
        let mut p = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        p.kill();
        *p = spawn_apiserver(&self.dir, self.sim.ip(APISERVER_HOST), self.port);
        drop(p);
        self.wait_ready();
    }

    /// Stops the API server until [`ControlPlane::start_apiserver`].
    pub fn stop_apiserver(&self) {
        self.apiserver.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }

    pub fn start_apiserver(&self) {
        *self.apiserver.lock().unwrap_or_else(|e| e.into_inner()) = spawn_apiserver(&self.dir, self.sim.ip(APISERVER_HOST), self.port);
        self.wait_ready();
    }

    /// `kubectl` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin_kubeconfig(), args, None)
    }

    /// `kubectl` with `kubeconfig`, `stdin` piped in when given.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(paths::kubectl());
        cmd.args(args).env("KUBECONFIG", kubeconfig).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            use std::io::Write as _;
            let mut w = child.stdin.take().expect("stdin");
            w.write_all(input.as_bytes()).expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl` as the admin; panics with kubectl's message when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Server-side apply of `yaml` as the admin (field manager `test-admin`).
    /// `Err` carries kubectl's message (the server's refusal).
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let out = self.kubectl_as(
            &self.admin_kubeconfig(),
            &["apply", "--server-side", "--field-manager=test-admin", "--force-conflicts", "-f", "-"],
            Some(yaml),
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `kubectl get ... -o json`, parsed; `None` when not found.
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
        let out = self.kubectl(&a);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound") || err.contains("not found"), "kubectl {}: {err}", a.join(" "));
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl json"))
    }

    /// Registers the CRDs an Istio cluster has (Istio's own, the Prometheus
    /// Operator's ServiceMonitor and PrometheusRule, both from the pinned
    /// upstream modules) and the project's, waits until they are
    /// Established, and creates `istio-system`.
    /// Once per control plane.
    pub fn install_prerequisites(&self) {
        self.prerequisites.get_or_init(|| self.register_prerequisites());
    }

    fn register_prerequisites(&self) {
        let prom = paths::prometheus_crds();
        for file in [
            paths::istio_crds(),
            prom.join("monitoring.coreos.com_servicemonitors.yaml"),
            prom.join("monitoring.coreos.com_prometheusrules.yaml"),
            paths::workspace_root().join("deploy/crd/istiomulticlouds.yaml"),
        ] {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if let Err(e) = self.apply(&text) {
                panic!("registering {}: {e}", file.display());
            }
        }
        self.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=120s"]);
        self.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n").expect("namespace istio-system");
    }

    /// What a cloud controller writes for a LoadBalancer Service: its address
    /// in the status.
    pub fn set_load_balancer_ip(&self, ns: &str, service: &str, ip: Ipv4Addr) {
        let status = format!("{{\"status\":{{\"loadBalancer\":{{\"ingress\":[{{\"ip\":\"{ip}\"}}]}}}}}}");
        self.kubectl_ok(&["patch", "service", service, "-n", ns, "--subresource=status", "--type=merge", "-p", &status]);
    }

    /// A token of ServiceAccount `ns/sa` from the TokenRequest API.
    pub fn token(&self, ns: &str, sa: &str, seconds: u32) -> String {
        self.kubectl_ok(&["create", "token", sa, "-n", ns, &format!("--duration={seconds}s")]).trim().to_string()
    }

    /// Writes a kubeconfig for ServiceAccount `ns/sa` (a TokenRequest token
    /// valid for an hour) at `path`: what a pod of that ServiceAccount uses.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str, path: &Path) {
        let token = self.token(ns, sa, 3600);
        std::fs::write(path, kubeconfig(&self.server(), &self.ca_pem, User::Token(&token))).expect("write kubeconfig");
    }

    fn dump_logs(&self) {
        for name in ["etcd.log", "kube-apiserver.log"] {
            let log = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("----- cluster {} {name} (last 40 lines) -----", self.sim.0);
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.apiserver.lock().unwrap_or_else(|e| e.into_inner()).kill();
        self.etcd.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }
}

enum User<'a> {
    Cert(&'a str, &'a str),
    Token(&'a str),
}

fn kubeconfig(server: &str, ca_pem: &str, user: User<'_>) -> String {
    let user = match user {
        User::Cert(c, k) => format!("    client-certificate-data: {}\n    client-key-data: {}\n", b64(c), b64(k)),
        User::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
         users:\n- name: test\n  user:\n{user}contexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n",
        b64(ca_pem)
    )
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).expect("log file")
}

fn spawn_etcd(dir: &Path, ip: Ipv4Addr, client_port: u16, peer_port: u16) -> Proc {
    let client = format!("http://{ip}:{client_port}");
    let peer = format!("http://{ip}:{peer_port}");
    let mut cmd = Command::new(paths::etcd());
    cmd.arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=default={peer}"))
        // A test's data need not survive a power cut.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(dir, "etcd.log"));
    procs::spawn(cmd).expect("spawn etcd")
}

fn spawn_apiserver(dir: &Path, ip: Ipv4Addr, port: u16) -> Proc {
    let etcd = std::fs::read_to_string(dir.join("etcd-url")).expect("etcd url");
    let f = |name: &str| dir.join(name).display().to_string();
    let node_advertise = std::fs::read_to_string(dir.join("node-advertise")).ok();
    let mut cmd = Command::new(paths::kube_apiserver());
    cmd.arg(format!("--etcd-servers={etcd}"));
    match &node_advertise {
        // A node's pods reach it at the node bridge's address; the lease
        // reconciler (the default) writes that as the `kubernetes` Service's
        // endpoint. The kubelet is authorized by the Node authorizer and
        // restricted to its own node's objects by NodeRestriction; the API
        // server reaches kubelets (logs, exec) with the admin certificate.
        Some(adv) => {
            cmd.arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={}", adv.trim()))
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg(format!("--kubelet-client-certificate={}", f("kubelet-client.crt")))
                .arg(format!("--kubelet-client-key={}", f("kubelet-client.key")))
                .arg("--kubelet-preferred-address-types=InternalIP");
        }
        None => {
            cmd.arg(format!("--bind-address={ip}"))
                .arg(format!("--advertise-address={ip}"))
                .arg("--authorization-mode=RBAC")
                // No kube-controller-manager runs: nothing would create the
                // ServiceAccount tokens that admission would mount into pods.
                .arg("--disable-admission-plugins=ServiceAccount")
                // The advertise address is on loopback: keep the `kubernetes`
                // Service's endpoints out of it.
                .arg("--endpoint-reconciler-type=none");
        }
    }
    cmd.arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", f("certs")))
        .arg(format!("--tls-cert-file={}", f("serving.crt")))
        .arg(format!("--tls-private-key-file={}", f("serving.key")))
        .arg(format!("--client-ca-file={}", f("ca.crt")))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", f("sa.pub")))
        .arg(format!("--service-account-signing-key-file={}", f("sa.key")))
        .arg("--api-audiences=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        // Every request made with a peer's remote secret (through the API
        // proxy, as deploy/'s API proxy ServiceAccount) is logged, so a test
        // can list what the peer's istiod read ([`ControlPlane::audit`]).
        .arg(format!("--audit-policy-file={}", f("audit-policy.yaml")))
        .arg(format!("--audit-log-path={}", f("audit.log")))
        .arg("--enable-priority-and-fairness=false")
        .arg("--v=1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(dir, "kube-apiserver.log"));
    procs::spawn(cmd).expect("spawn kube-apiserver")
}
