//! A simulated cluster's agent: the real `multicloud-agent` binary in
//! standalone mode, its HTTP port on the cluster's loopback range (port 0,
//! address read back from a file), its log printed when a test fails, and
//! the process gone when the handle drops.

use crate::procs::{self, Proc};
use crate::{hosts, paths, wait_until, SimCluster};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Clone)]
pub struct AgentOptions {
    pub cluster: SimCluster,
    /// The standalone file's contents (YAML or JSON).
    pub standalone: String,
    /// Where the agent writes the gateway filter's ECDS resource.
    pub ecds_file: PathBuf,
    pub refresh_seconds: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// The workload certificate and key (PEM) the agent serves to sidecars.
    pub workload_cert: Option<(String, String)>,
    /// The API proxy's credential (written to `api-credential`, passed as --api-proxy-credential).
    pub api_proxy_credential: Option<String>,
    /// More arguments to `multicloud-agent run` (e.g. --remote-secrets-dir).
    pub extra_args: Vec<String>,
    /// Kubernetes mode instead of standalone (then `standalone` is unused).
    pub kubernetes: Option<KubeMode>,
}

/// The agent in Kubernetes mode, as a process outside any pod: what a pod
/// of the DaemonSet would have from the kubelet comes from the test.
#[derive(Clone)]
pub struct KubeMode {
    /// A kubeconfig holding the token of deploy/'s ServiceAccount.
    pub kubeconfig: PathBuf,
    /// POD_NAME (the holder identity in the Lease).
    pub pod_name: String,
    /// The DaemonSet container's args as deploy/ renders them; the test bed
    /// replaces only the listen addresses and file paths that a pod has and a
    /// loopback process cannot (see [`KubeMode::local_args`]).
    pub args: Vec<String>,
    /// Resolve peers' metadata and API hosts by name
    /// ([`crate::istio::with_peer_names`]), as in a cluster with DNS.
    pub resolve_peers: bool,
}

impl KubeMode {
    /// `args` (from the rendered DaemonSet) with what names in-pod
    /// addresses and files dropped (`--http`, `--xds`, `--filter-module`,
    /// the API proxy credential, istiod's CA address): the test bed sets
    /// them for loopback (`crate::istio::agent_ca_args` for the CA).
    pub fn local_args(&self) -> Vec<String> {
        const REPLACED: &[&str] = &["--http", "--xds", "--filter-module", "--filter-wasm", "--api-proxy-credential", "--istio-ca-address"];
        self.args.iter().filter(|a| a.as_str() != "run" && !REPLACED.iter().any(|r| a.split('=').next() == Some(r))).cloned().collect()
    }
}

pub struct Agent {
    pub name: String,
    proc: Proc,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    http: SocketAddr,
    xds: SocketAddr,
    opts: AgentOptions,
}

impl Agent {
    /// A directory for an agent, created before the agent (the gateway's
    /// bootstrap needs the ECDS file path first).
    pub fn prepare(cluster: SimCluster) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("multicloud-agent-{}-", cluster.0)).tempdir().expect("tempdir")
    }

    /// Starts the agent in `dir` and waits for its HTTP port.
    pub fn start(dir: tempfile::TempDir, opts: AgentOptions) -> Agent {
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("standalone.yaml"), &opts.standalone).expect("write standalone file");
        if let Some((c, k)) = &opts.workload_cert {
            std::fs::write(path.join("workload.crt"), c).expect("write cert");
            std::fs::write(path.join("workload.key"), k).expect("write key");
        }
        if let Some(c) = &opts.api_proxy_credential {
            std::fs::write(path.join("api-credential"), c).expect("write credential");
        }
        let mut a = Agent {
            name: format!("agent-{}", opts.cluster.0),
            proc: spawn(&path, &opts),
            dir: Some(dir),
            path,
            http: "0.0.0.0:0".parse().expect("addr"),
            xds: "0.0.0.0:0".parse().expect("addr"),
            opts,
        };
        a.wait_http();
        a
    }

    fn wait_http(&mut self) {
        let xfile = self.path.join("xds-address");
        let file = self.path.join("http-address");
        let name = self.name.clone();
        self.http = wait_until(&format!("{name} HTTP port"), Duration::from_secs(30), || {
            if let Some(st) = self.proc.try_wait() {
                self.dump_log();
                panic!("{name} exited: {st}");
            }
            let t = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
            t.trim().parse::<SocketAddr>().map_err(|e| e.to_string())
        });
        self.xds = wait_until(&format!("{name} xDS port"), Duration::from_secs(30), || {
            let t = std::fs::read_to_string(&xfile).map_err(|e| e.to_string())?;
            t.trim().parse::<SocketAddr>().map_err(|e| e.to_string())
        });
    }

    /// The agent's xDS (ADS) address.
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds
    }

    /// The `/xds` admin view.
    pub fn xds_view(&self) -> serde_json::Value {
        self.get("/xds").map(|r| r.json()).unwrap_or(serde_json::Value::Null)
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(self.path.join("http-address"));
        let _ = std::fs::remove_file(self.path.join("xds-address"));
        self.proc = spawn(&self.path, &self.opts);
        self.wait_http();
    }

    /// Replaces the workload certificate files (the agent re-reads them within a second).
    pub fn set_workload_cert(&mut self, cert: &str, key: &str) {
        std::fs::write(self.path.join("workload.crt"), cert).expect("write cert");
        std::fs::write(self.path.join("workload.key"), key).expect("write key");
        self.opts.workload_cert = Some((cert.to_string(), key.to_string()));
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.id()
    }

    /// SIGTERM, as a kubelet stops a pod; `Some(status)` if the agent exited
    /// within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.proc.terminate(grace)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn get(&self, path: &str) -> Result<crate::http::Resp, String> {
        crate::http::try_request("GET", &format!("http://{}{}", self.http, path), &[])
    }

    /// The whole `/status` document.
    pub fn status(&self) -> serde_json::Value {
        self.get("/status").map(|r| r.json()).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until object `name`'s condition `type_` has `status`; returns the object's status.
    pub fn wait_condition(&self, name: &str, type_: &str, status: &str, timeout: Duration) -> serde_json::Value {
        wait_until(&format!("{}: {name} {type_}={status}", self.name), timeout, || {
            let s = self.status()["objects"][name].clone();
            let c = s["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned());
            match c {
                Some(c) if c["status"] == status => Ok(s),
                other => Err(format!("{other:?}")),
            }
        })
    }

    /// Waits for condition `type_` of object `name` to have `status` and
    /// `reason` (e.g. a fetch in flight when a gateway dies reports
    /// `RequestFailed` before the next one meets the closed port).
    pub fn wait_reason(&self, name: &str, type_: &str, status: &str, reason: &str, timeout: Duration) -> serde_json::Value {
        wait_until(&format!("{}: {name} {type_}={status} ({reason})", self.name), timeout, || {
            let s = self.status()["objects"][name].clone();
            let c = s["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned());
            match c {
                Some(c) if c["status"] == status && c["reason"] == reason => Ok(s),
                other => Err(format!("{other:?}")),
            }
        })
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|r| r.text()).unwrap_or_default()
    }

    /// Replaces the standalone file (atomically); the agent re-reads it.
    pub fn rewrite_standalone(&mut self, contents: &str) {
        let tmp = self.path.join(".standalone.tmp");
        std::fs::write(&tmp, contents).expect("write");
        std::fs::rename(&tmp, self.path.join("standalone.yaml")).expect("rename");
        self.opts.standalone = contents.to_string();
    }

    /// The agent's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.path
    }

    /// Where the agent writes peer `object`'s remote secret (with `--remote-secrets-dir {dir}/remote-secrets`).
    pub fn remote_secret_path(&self, object: &str) -> PathBuf {
        self.path.join("remote-secrets").join(format!("{object}.kubeconfig"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.path.join("federation.key")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path.join("agent.log")).unwrap_or_default()
    }

    fn dump_log(&self) {
        procs::print_log_tail(&self.name, &self.path.join("agent.log"), 150);
    }
}

fn spawn(path: &std::path::Path, o: &AgentOptions) -> Proc {
    let mut cmd = match &o.kubernetes {
        Some(k) if k.resolve_peers => crate::istio::with_peer_names(&paths::agent(), path),
        _ => Command::new(paths::agent()),
    };
    cmd.arg("run");
    match &o.kubernetes {
        None => {
            cmd.arg("--standalone").arg(path.join("standalone.yaml")).arg("--key").arg(path.join("federation.key"));
        }
        Some(k) => {
            cmd.args(k.local_args()).env("KUBECONFIG", &k.kubeconfig).env("POD_NAME", &k.pod_name).env("POD_NAMESPACE", "istio-system");
        }
    }
    cmd.args(["--http", &format!("{}:0", o.cluster.ip(hosts::AGENT))])
        .arg("--http-address-file")
        .arg(path.join("http-address"))
        .arg("--edge-ecds-file")
        .arg(&o.ecds_file)
        // The module travels inline in the filter's ECDS resource, as
        // deploy/ has it: the gateway reads no file of its own.
        .arg("--filter-module")
        .arg(paths::filter_wasm())
        .arg("--status-file")
        .arg(path.join("status.json"))
        // xDS keeps its port across restarts (proxies reconnect to it): the
        // first start picks one, restarts reuse it.
        .args(["--xds", &xds_listen(path, o)])
        .arg("--xds-address-file")
        .arg(path.join("xds-address"))
        .args(["--refresh-seconds", &o.refresh_seconds.to_string()])
        .args(["--backoff-base-ms", &o.backoff_base_ms.to_string()])
        .args(["--backoff-cap-ms", &o.backoff_cap_ms.to_string()])
        .args(["--connect-timeout-ms", "1000", "--fetch-timeout-ms", "3000"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(path.join("agent.log")).expect("agent log"));
    if o.workload_cert.is_some() {
        cmd.arg("--workload-cert").arg(path.join("workload.crt")).arg("--workload-key").arg(path.join("workload.key"));
        cmd.args(["--workload-cert-sds-cluster", "ads"]);
    }
    if o.api_proxy_credential.is_some() {
        cmd.arg("--api-proxy-credential").arg(path.join("api-credential"));
    }
    cmd.args(o.extra_args.iter().map(|a| a.replace("{dir}", &path.display().to_string())));
    procs::spawn(cmd).expect("spawn agent")
}

fn xds_listen(path: &std::path::Path, o: &AgentOptions) -> String {
    let fixed = path.join("xds-port");
    let port = match std::fs::read_to_string(&fixed) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            let p = crate::fixtures::free_port(o.cluster.ip(hosts::AGENT)).to_string();
            std::fs::write(&fixed, &p).expect("write xds port");
            p
        }
    };
    format!("{}:{port}", o.cluster.ip(hosts::AGENT))
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.kill();
        procs::on_failure(&self.name, &self.path.join("agent.log"), 150, &mut self.dir);
    }
}
