//! A real Envoy process for a test.

use crate::procs::{self, Proc};
use crate::{paths, wait_until, SimCluster};
use multicloud_proto::envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use multicloud_proto::prost::Message as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long an Envoy may take to become `LIVE` (Wasm compilation included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start: a name for logs, where it lives, and its bootstrap,
/// without `admin` (which the test bed adds on the cluster's range, port 0).
///
/// The bootstrap is [`EnvoySpec::typed`] (built from
/// [`crate::fixtures::dp`] and `multicloud_proto`, written as binary
/// `envoy.pb`), with [`EnvoySpec::bootstrap`] (YAML, `{dir}` replaced by the
/// Envoy's directory) merged over it by Envoy (`--config-yaml`: repeated
/// fields are appended). Envoy runs in its directory, so relative file
/// names in the typed part name files of [`EnvoySpec::files`].
#[derive(Clone, Default)]
pub struct EnvoySpec {
    pub name: String,
    pub cluster: SimCluster,
    pub host: u8,
    pub typed: Bootstrap,
    pub bootstrap: String,
    /// Files to write into the Envoy's directory before start (relative path, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Benchmarks only: run Envoy under valgrind's callgrind, writing its
    /// counts here, uninstrumented until `callgrind_control -i on`
    /// ([`Envoy::callgrind`]). Start-up takes minutes then.
    pub callgrind: Option<PathBuf>,
}

impl EnvoySpec {
    /// A typed bootstrap only.
    pub fn typed(name: String, cluster: SimCluster, host: u8, typed: Bootstrap) -> EnvoySpec {
        EnvoySpec { name, cluster, host, typed, ..Default::default() }
    }

    /// A YAML bootstrap only.
    pub fn yaml(name: String, cluster: SimCluster, host: u8, bootstrap: String) -> EnvoySpec {
        EnvoySpec { name, cluster, host, bootstrap, ..Default::default() }
    }

    /// Writes the files and the bootstrap into `dir`.
    fn write_into(&self, dir: &Path) {
        for (rel, contents) in &self.files {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, contents).expect("write file");
        }
        let admin_ip = self.cluster.ip(self.host);
        let yaml = self.bootstrap.replace("{dir}", &dir.display().to_string());
        if self.typed == Bootstrap::default() {
            let bootstrap = format!("{yaml}\nadmin:\n  address: {{socket_address: {{address: {admin_ip}, port_value: 0}}}}\n");
            std::fs::write(dir.join("envoy.yaml"), bootstrap).expect("write bootstrap");
        } else {
            let admin = Admin { address: Some(multicloud_proto::parts::socket(&admin_ip.to_string(), 0)), ..Default::default() };
            let typed = Bootstrap { admin: Some(admin), ..self.typed.clone() };
            std::fs::write(dir.join("envoy.pb"), typed.encode_to_vec()).expect("write bootstrap");
            if !yaml.trim().is_empty() {
                std::fs::write(dir.join("overlay.yaml"), yaml).expect("write bootstrap overlay");
            }
        }
    }
}

pub struct Envoy {
    pub name: String,
    proc: Proc,
    /// `None` only after a failed test kept it for inspection.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    admin: SocketAddr,
    spec: EnvoySpec,
}

impl Envoy {
    /// Starts an Envoy and waits until its admin API reports `LIVE`.
    /// `{dir}` in the bootstrap is replaced by the Envoy's private directory.
    pub fn start(spec: EnvoySpec) -> Envoy {
        let mut envoy = Envoy::spawn(spec);
        envoy.wait_admin_and_live();
        envoy
    }

    /// Writes the spec into a fresh directory and starts the process there.
    fn spawn(spec: EnvoySpec) -> Envoy {
        let dir = tempfile::Builder::new().prefix(&format!("multicloud-{}-", spec.name)).tempdir().expect("tempdir");
        spec.write_into(dir.path());
        let path = dir.path().to_path_buf();
        let proc = spawn_envoy(&path, &spec);
        Envoy { name: spec.name.clone(), proc, dir: Some(dir), path, admin: "0.0.0.0:0".parse().expect("addr"), spec }
    }

    /// Starts an Envoy and waits only for its admin address, not for `LIVE`
    /// (a proxy whose initial xDS fetch is huge: benchmarks wait on ACKs).
    pub fn start_unready(spec: EnvoySpec) -> Envoy {
        let mut envoy = Envoy::spawn(spec);
        let admin_path = envoy.path.join("admin-address");
        envoy.admin = wait_until("envoy admin address", READY_TIMEOUT, || {
            let text = std::fs::read_to_string(&admin_path).map_err(|e| e.to_string())?;
            text.trim().parse::<SocketAddr>().map_err(|e| format!("{text:?}: {e}"))
        });
        envoy
    }

    /// Stops the process and starts it again with the same bootstrap (and
    /// so the same fixed listener ports); waits until `LIVE`.
    pub fn restart(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(self.path.join("admin-address"));
        self.proc = spawn_envoy(&self.path, &self.spec);
        self.wait_admin_and_live();
    }

    fn wait_admin_and_live(&mut self) {
        let admin_path = self.path.join("admin-address");
        let name = self.name.clone();
        let timeout = self.ready_timeout();
        self.admin = wait_until(&format!("envoy {name} admin address"), timeout, || {
            if let Some(status) = self.proc.try_wait() {
                self.dump_log();
                panic!("envoy {name} exited during start: {status}");
            }
            let text = std::fs::read_to_string(&admin_path).map_err(|e| e.to_string())?;
            text.trim().parse::<SocketAddr>().map_err(|e| format!("{text:?}: {e}"))
        });
        self.wait_live();
    }
}

fn spawn_envoy(dir: &Path, spec: &EnvoySpec) -> Proc {
    let (typed, overlay) = (dir.join("envoy.pb"), dir.join("overlay.yaml"));
    let config = if typed.exists() { typed } else { dir.join("envoy.yaml") };
    let admin_path = dir.join("admin-address");
    let log = dir.join("envoy.log");
    {
        let mut cmd = match &spec.callgrind {
            None => Command::new(paths::envoy()),
            Some(out) => {
                // The binary itself (the virtualenv's `envoy` is a launcher
                // script); V8 writes its code at run time (`--smc-check`).
                let mut c = Command::new("valgrind");
                c.args(["--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file", "--quiet"])
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(crate::node::envoy_binary());
                c
            }
        };
        cmd.current_dir(dir).arg("-c").arg(&config);
        if let Ok(yaml) = std::fs::read_to_string(&overlay) {
            cmd.args(["--config-yaml", &yaml]);
        }
        cmd.args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            .args(["--service-node", &spec.name, "--service-cluster", &format!("cluster-{}", spec.cluster.0)])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // stderr, not --log-path: the file sink buffers, stderr is
            // written line by line, so a failing test sees the last lines.
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open envoy log"));
        procs::spawn(cmd).expect("spawn envoy")
    }
}

impl Envoy {
    /// Starts several Envoys in parallel (their start-up is mostly Wasm
    /// compilation, which is single-threaded per Envoy).
    pub fn start_all(specs: Vec<EnvoySpec>) -> Vec<Envoy> {
        let handles: Vec<_> = specs.into_iter().map(|s| std::thread::spawn(move || Envoy::start(s))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    }

    pub fn wait_live(&mut self) {
        let name = self.name.clone();
        let timeout = self.ready_timeout();
        wait_until(&format!("envoy {name} to report LIVE on /ready"), timeout, || {
            if let Some(status) = self.proc.try_wait() {
                self.dump_log();
                panic!("envoy {name} exited: {status}");
            }
            let body = self.admin_get("/ready")?;
            if body.trim() == "LIVE" {
                Ok(())
            } else {
                Err(body)
            }
        })
    }

    /// [`READY_TIMEOUT`], or ten times it under callgrind.
    fn ready_timeout(&self) -> Duration {
        if self.spec.callgrind.is_some() {
            READY_TIMEOUT * 10
        } else {
            READY_TIMEOUT
        }
    }

    /// Under [`EnvoySpec::callgrind`]: the instructions (Ir) Envoy executes,
    /// all threads, while `f` runs (instrumentation switched on and off around
    /// it, then dumped and read back).
    pub fn callgrind<T>(&self, f: impl FnOnce() -> T) -> (u64, T) {
        let out = self.spec.callgrind.as_ref().expect("an Envoy started under callgrind");
        let pid = self.proc.id().expect("envoy's pid").to_string();
        let control = |args: &[&str]| {
            let o = Command::new("callgrind_control").args(args).arg(&pid).output().expect("callgrind_control");
            assert!(o.status.success(), "callgrind_control {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        control(&["--zero"]);
        control(&["-i", "on"]);
        let r = f();
        control(&["-i", "off"]);
        control(&["--dump"]);
        // Each dump is a file `OUT.N`; the newest holds this interval.
        let dir = out.parent().expect("the output's directory");
        let stem = out.file_name().expect("a file name").to_string_lossy().to_string();
        let newest = std::fs::read_dir(dir)
            .expect("read the callgrind directory")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{stem}.")))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .expect("a callgrind dump");
        let text = std::fs::read_to_string(newest.path()).expect("read the callgrind dump");
        // `totals:` (the dump's last line) holds the interval's count.
        let ir = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a totals line in the callgrind dump");
        let _ = std::fs::remove_file(newest.path());
        (ir, r)
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = crate::http::try_request("GET", &format!("http://{}{}", self.admin, path), &[]).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    pub fn admin_post(&self, path: &str) -> Result<String, String> {
        let r = crate::http::try_request("POST", &format!("http://{}{}", self.admin, path), &[]).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The bound address of the listener named `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.active_listener(name).unwrap_or_else(|body| panic!("envoy {} has no listener {name}: {body}", self.name))
    }

    /// The bound address of the listener named `name` once it is active
    /// (warmed: its secrets and filter configurations arrived), else what
    /// the admin API said.
    pub fn active_listener(&self, name: &str) -> Result<SocketAddr, String> {
        let body = self.admin_get("/listeners?format=json")?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        for l in v["listener_statuses"].as_array().into_iter().flatten() {
            if l["name"] == name {
                let sa = &l["local_address"]["socket_address"];
                let ip = sa["address"].as_str().expect("address");
                let port = sa["port_value"].as_u64().expect("port");
                return Ok(format!("{ip}:{port}").parse().expect("socket addr"));
            }
        }
        Err(body)
    }

    /// A counter or gauge from `/stats`, if present.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let body = self.admin_get(&format!("/stats?filter=^{}$", regex_escape(name))).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")).and_then(|v| v.trim().parse().ok()))
    }

    pub fn config_dump(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/config_dump?include_eds").expect("config_dump")).expect("config_dump json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("envoy.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn dump_log(&self) {
        procs::print_log_tail(&format!("envoy {}", self.name), &self.log_path(), 200);
    }

    /// Kills the process now (the directory stays until drop).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' { vec![c] } else { vec!['\\', c] }).collect()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.proc.kill();
        procs::on_failure(&format!("envoy {}", self.name), &self.log_path(), 200, &mut self.dir);
    }
}
