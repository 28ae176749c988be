//! `make lab`: the two real-Istio clusters of `make demo-istio` left running
//! for a person to use (`demo_istio --lab`, tests/src/bin/demo_istio.rs).
//!
//! Everything a lab makes is in its directory ([`dir`]: `MULTICLOUD_LAB_DIR`,
//! by default `/tmp/istio-multicloud-lab`, the same for every checkout, so
//! that a second `make lab` finds the first): the marker
//! `.istio-multicloud-lab`, `lab.pid` (what `make lab-down` signals),
//! `lab.txt` (what the lab printed), `bin/kubectl`, per cluster
//! `cluster-N/` with its admin kubeconfig, its edge CA and the
//! IstioMulticloud object another cluster applies to name it, and `tmp/`,
//! where the test bed makes every temporary directory of the lab (control
//! planes, istiods, gateways, sidecars, agents), so that every process of
//! the lab has the lab's directory on its command line.
//!
//! The lab stops on SIGINT (Ctrl-C; `make lab-down` sends it), SIGTERM or
//! SIGHUP, at any point of its start or after: it kills and reaps every
//! child process ([`crate::procs::kill_children`]; pilot-agent with its
//! Envoy, whose orphans the lab reaps as their subreaper), removes its
//! directory and exits (0 once ready, 130 before). A lab
//! that fails keeps its directory for inspection (`make lab-down`, or the
//! next `make lab`, removes it); its processes are gone all the same.

use crate::kube_mesh::{imc_object, metadata_host, object_name, KubeCluster};
use crate::{hosts, paths};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The lab's directory when `MULTICLOUD_LAB_DIR` is unset.
pub const DEFAULT_DIR: &str = "/tmp/istio-multicloud-lab";
/// The file that makes a directory a lab's (only such a directory is removed).
pub const MARKER: &str = ".istio-multicloud-lab";
/// The lab process's pid, what `make lab-down` signals.
pub const PID_FILE: &str = "lab.pid";
/// The last line a lab prints once it is up.
pub const READY_PREFIX: &str = "READY";

static READY: AtomicBool = AtomicBool::new(false);
static STOPPING: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// The lab's directory: `MULTICLOUD_LAB_DIR`, else [`DEFAULT_DIR`].
pub fn dir() -> PathBuf {
    std::env::var_os("MULTICLOUD_LAB_DIR").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// A lab that holds its directory (made by [`Lab::claim`]).
pub struct Lab {
    dir: PathBuf,
    started: Instant,
    kubectl: PathBuf,
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

/// The pid in `dir`'s pid file, if that process is a running lab.
pub fn running(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie (state Z, after the command name's closing parenthesis) has stopped.
    let zombie = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false);
    (String::from_utf8_lossy(&cmdline).contains("demo_istio") && !zombie).then_some(pid)
}

/// `name` as the absolute path of an executable (searched on `PATH` if it
/// has no slash).
fn executable(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return std::fs::canonicalize(name).ok();
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

impl Lab {
    /// Claims the lab's directory before anything of the lab starts: refuses
    /// when a lab is running there, removes a stopped lab's leftovers, writes
    /// the pid file and `bin/kubectl`, makes `tmp/` the test bed's temporary
    /// directory, and installs the stop on SIGINT, SIGTERM and SIGHUP.
    pub fn claim() -> Lab {
        let started = Instant::now();
        let dir = dir();
        if let Some(pid) = running(&dir) {
            fail(&format!(
                "a lab is already running (pid {pid}, directory {}): `make lab-down` stops it (MULTICLOUD_LAB_DIR names another directory, for a lab on other clusters: --clusters)",
                dir.display()
            ));
        }
        if dir.exists() {
            if !dir.join(MARKER).exists() {
                fail(&format!(
                    "{} exists and is not a lab's directory (it has no {MARKER}): remove it, or set MULTICLOUD_LAB_DIR to another path",
                    dir.display()
                ));
            }
            eprintln!("removing what a lab that is no longer running left in {}", dir.display());
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                fail(&format!("cannot remove {}: {e}", dir.display()));
            }
        }
        let kubectl = executable(&paths::kubectl()).unwrap_or_else(|| {
            fail(&format!(
                "kubectl ({}) not found: `make lab` builds it (scripts/tools.sh); else run `eval \"$(scripts/tools.sh env)\"` first",
                paths::kubectl().display()
            ))
        });
        for sub in ["tmp", "bin"] {
            if let Err(e) = std::fs::create_dir_all(dir.join(sub)) {
                fail(&format!("cannot create {}: {e}", dir.join(sub).display()));
            }
        }
        let wrapper = dir.join("bin/kubectl");
        let files = [
            (dir.join(MARKER), "A directory of `make lab` (tests/src/lab.rs); `make lab-down` stops the lab and removes it.\n".to_string()),
            (dir.join(PID_FILE), format!("{}\n", std::process::id())),
            (
                wrapper.clone(),
                format!("#!/bin/sh\n# The lab's kubectl (scripts/tools.sh builds it).\nexec '{}' \"$@\"\n", kubectl.display()),
            ),
        ];
        for (path, text) in files {
            if let Err(e) = std::fs::write(&path, text) {
                fail(&format!("cannot write {}: {e}", path.display()));
            }
        }
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod bin/kubectl");
        if tempfile::env::override_temp_dir(&dir.join("tmp")).is_err() {
            fail("the test bed's temporary directory was set before the lab claimed its own");
        }
        if let Err(e) = crate::procs::become_subreaper() {
            fail(&format!("cannot make the lab the reaper of its processes' orphans (prctl PR_SET_CHILD_SUBREAPER): {e}"));
        }
        install_stop(&dir);
        Lab { dir, started, kubectl }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What a person needs to use cluster `c` (`role`: "A", "B"), with
    /// `workloads` (lines, commands first marked `$ `) appended; writes the
    /// cluster's files into `cluster-N/`.
    pub fn cluster(&self, c: &KubeCluster, role: &str, workloads: &[String]) -> String {
        let name = object_name(c.sim);
        let cdir = self.dir.join(&name);
        std::fs::create_dir_all(&cdir).expect("mkdir cluster dir");
        let kubeconfig = cdir.join("kubeconfig");
        std::fs::copy(c.cp.admin_kubeconfig(), &kubeconfig).expect("copy the admin kubeconfig");
        let ca = cdir.join("edge-ca.pem");
        std::fs::write(&ca, c.edge_ca.pem()).expect("write edge CA");
        let peer = cdir.join("peer.yaml");
        std::fs::write(&peer, imc_object(c.sim, &c.metadata_endpoint, &c.edge_ca.pem())).expect("write peer object");
        let host = metadata_host(c.sim);
        // The metadata endpoint names the host and the istiod-run gateway's
        // HTTPS port, which it binds on every address; peers resolve the
        // host to the cluster's gateway address.
        let port = c.metadata_endpoint.rsplit_once(':').and_then(|(_, p)| p.split('/').next()?.parse::<u16>().ok()).expect("endpoint port");
        let gw = c.sim.ip(hosts::GATEWAY);
        let kubectl = self.dir.join("bin/kubectl");
        let mut out = format!(
            "{name} ({role})\n\
             \x20 KUBECONFIG={kubeconfig}\n\
             \x20   $ KUBECONFIG={kubeconfig} {kubectl} get imc\n\
             \x20 metadata endpoint: {endpoint} (the gateway at {gw}:{port}, Host and SNI {host}; its edge CA: {ca})\n\
             \x20   $ curl -sS --cacert {ca} --resolve {host}:{port}:{gw} https://{host}:{port}/metadata/public/public.json\n\
             \x20   another cluster on this machine names it with {peer} (its agent must resolve {host} to {gw});\n\
             \x20   this cluster then needs that cluster's object in turn (kubectl apply)\n",
            kubeconfig = kubeconfig.display(),
            kubectl = kubectl.display(),
            endpoint = c.metadata_endpoint,
            ca = ca.display(),
            peer = peer.display(),
        );
        for w in workloads {
            out.push_str(&format!("  {w}\n"));
        }
        let logs = [
            c.istiod.as_ref().map(|i| ("istiod", i.dir().join("istiod.log"))),
            c.istio_gateway.as_ref().map(|g| ("gateway", g.dir().join("pilot-agent.log"))),
            c.agents.first().map(|a| ("agent", a.dir().join("agent.log"))),
        ];
        let logs: Vec<String> = logs.into_iter().flatten().map(|(what, p)| format!("{what} {}", p.display())).collect();
        out.push_str(&format!("  logs: {}\n", logs.join(", ")));
        out
    }

    /// Prints `text` (and keeps it in `lab.txt`), then the ready line, and
    /// stays up until stopped.
    pub fn serve(self, text: &str) -> ! {
        let head = format!(
            "LAB: the clusters stay up until Ctrl-C here, or `make lab-down` from another terminal (pid {}, directory {})\n\
             \x20 kubectl: {} (runs {})\n\
             \x20 the lab's agents and istiods resolve metadata.cluster-N.example and api.cluster-N.example to 127.0.N.1 (every N)\n\n",
            std::process::id(),
            self.dir.display(),
            self.dir.join("bin/kubectl").display(),
            self.kubectl.display(),
        );
        let all = format!("{head}{text}");
        std::fs::write(self.dir.join("lab.txt"), &all).expect("write lab.txt");
        println!("\n{all}");
        READY.store(true, Ordering::SeqCst);
        println!(
            "{READY_PREFIX} in {:.1} s: the lab is up (this text is in {})",
            self.started.elapsed().as_secs_f64(),
            self.dir.join("lab.txt").display()
        );
        loop {
            std::thread::park();
        }
    }
}

/// The stop: on SIGINT, SIGTERM or SIGHUP, kill and reap every child, remove
/// the directory, exit without running exit hooks (they would stop the
/// same processes and remove directories inside the one removed, and they
/// take locks that a thread stopped mid-way may hold). A thread that
/// panics while the lab stops (it saw its processes go) stays quiet. On
/// any other exit (a failure), the exit hook kills and reaps every child
/// and keeps the directory.
fn install_stop(dir: &Path) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if STOPPING.load(Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        FAILED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    let d = dir.to_path_buf();
    crate::at_exit(move || {
        crate::procs::kill_children();
        if FAILED.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(d.join(PID_FILE));
            eprintln!(
                "the lab failed; its processes are stopped and its directory kept for inspection: {} (`make lab-down` removes it)",
                d.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&d);
        }
    });
    let d = dir.to_path_buf();
    ctrlc::set_handler(move || {
        if STOPPING.swap(true, Ordering::SeqCst) {
            return;
        }
        let ready = READY.load(Ordering::SeqCst);
        eprintln!("\nstopping the lab{}: every process, then {}", if ready { "" } else { " (it was still starting)" }, d.display());
        let left = crate::procs::kill_children();
        let removed = std::fs::remove_dir_all(&d);
        match (left, removed) {
            (0, Ok(())) => eprintln!("lab stopped: no process left, {} removed", d.display()),
            (n, r) => eprintln!("lab stopped, but {n} child processes are still listed and removing {} said {r:?}", d.display()),
        }
        // SAFETY: _exit(2) ends the process at once; nothing is left to run.
        #[allow(unsafe_code)]
        unsafe {
            libc::_exit(if ready { 0 } else { 130 });
        }
    })
    .expect("install the lab's signal handler");
}
