//! The test bed shared by every end-to-end test and the benchmarks.
//!
//! - [`envoy::Envoy`]: a real Envoy 1.40 process (from the project's `.venv`),
//!   with admin and listeners on port 0 of its cluster's loopback range,
//!   ready only when the admin API says `LIVE`, killed on drop, its log
//!   printed when the test fails, and never outliving the test process.
//! - [`SimCluster`]: one loopback range per simulated cluster
//!   (cluster 1 on 127.0.1.x, cluster 2 on 127.0.2.x, ...).
//! - [`fixtures`]: per-cluster identities generated in the test: cluster
//!   UUID, Istio-style root CA, federation key.
//! - [`upstream::RecordingUpstream`]: an HTTP server that records what reached
//!   it, to prove what a filter let through (and what it did not).
//! - [`registry::Registry`]: an OCI registry on loopback (`crane registry
//!   serve`); [`registry::serve_filter_image`] serves the filter's Wasm image
//!   (`make images`) by digest, as a WasmPlugin `url` would name it.
//! - [`xds_client`]: an xDS client that is not Envoy (any node id, any
//!   client certificate or none), to test what the agent's port refuses.
//! - [`wait_until`]: poll a state with a deadline; tests never sleep and hope.
//! - [`lab`]: `make lab`, the demo's real-Istio clusters left running in a
//!   directory of their own, and stopped with nothing left behind.

// The test bed: a failed expectation is a failed test, said where it
// happened (clippy.toml allows this in #[test] functions; the test bed's
// helpers are test code too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod dump;
pub mod envoy;
pub mod fixtures;
pub mod gateway;
pub mod http;
pub mod istio;
pub mod istio_mesh;
pub mod kube;
pub mod kube_mesh;
pub mod lab;
pub mod load;
pub mod manifests;
pub mod mesh;
pub mod mtls;
pub mod node;
pub mod paths;
pub mod procs;
pub mod registry;
pub mod sidecar;
pub mod upstream;
pub mod xds_client;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A simulated cluster: its own loopback range 127.0.N.0/24.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCluster(pub u8);

impl SimCluster {
    /// `127.0.N.host`.
    pub fn ip(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.0, host)
    }
}

/// Host numbers inside a cluster's range, so that a glance at an address
/// tells which process it is.
pub mod hosts {
    pub const GATEWAY: u8 = 1;
    pub const AGENT: u8 = 2;
    pub const SIDECAR: u8 = 3;
    pub const APP: u8 = 4;
    pub const UPSTREAM: u8 = 9;
    pub const APISERVER: u8 = 10;
    pub const ETCD: u8 = 11;
    pub const REGISTRY: u8 = 12;
    /// istiod (real tier, tests/src/istio.rs).
    pub const ISTIOD: u8 = 20;
    /// The istiod-run (pilot-agent) gateway beside the test bed's gateway
    /// (real-Istio mesh, tests/src/kube_mesh.rs).
    pub const ISTIO_GATEWAY: u8 = 21;
    /// Workloads: pilot-agent-run sidecars (real-Istio mesh).
    pub const ISTIO_WORKLOAD: u8 = 30;
    pub const ISTIO_CLIENT: u8 = 31;
    /// The node tier's kube-proxy, kube-controller-manager, kube-scheduler
    /// and CoreDNS health/metrics ports (tests/src/node.rs).
    pub const NODE_PROXY: u8 = 40;
    pub const NODE_CONTROLLERS: u8 = 41;
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming
/// `what` and the last observation.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}")
            }
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// One `'static` instance per simulated cluster, started on first use and
/// shared by every test of a test binary. Different clusters start
/// concurrently; callers for the same cluster wait for the one start.
pub struct Shared<T: 'static> {
    cells: std::sync::Mutex<Vec<(SimCluster, &'static std::sync::OnceLock<&'static T>)>>,
}

impl<T: Sync> Shared<T> {
    pub const fn new() -> Self {
        Shared { cells: std::sync::Mutex::new(Vec::new()) }
    }

    pub fn get_or_start(&self, sim: SimCluster, start: impl FnOnce() -> &'static T) -> &'static T {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            match cells.iter().find(|(s, _)| *s == sim) {
                Some((_, c)) => *c,
                None => {
                    let c: &'static std::sync::OnceLock<&'static T> = Box::leak(Box::new(std::sync::OnceLock::new()));
                    cells.push((sim, c));
                    c
                }
            }
        };
        cell.get_or_init(start)
    }
}

impl<T: Sync> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}

type ExitHook = Box<dyn FnOnce() + Send>;

fn exit_hooks() -> &'static std::sync::Mutex<Vec<ExitHook>> {
    static HOOKS: std::sync::OnceLock<std::sync::Mutex<Vec<ExitHook>>> = std::sync::OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

extern "C" fn run_exit_hooks() {
    let hooks = std::mem::take(&mut *exit_hooks().lock().unwrap_or_else(|e| e.into_inner()));
    for h in hooks.into_iter().rev() {
        h();
    }
}

/// Runs `f` when the test process exits normally (`exit(3)`, which the
/// test harness reaches after the last test): what shared, never-dropped
/// test-bed pieces use to stop their processes and remove their
/// directories. (A killed test process still takes its children with it,
/// [`procs`]; only the directories stay then.)
pub fn at_exit(f: impl FnOnce() + Send + 'static) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain extern "C" function with no arguments.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(run_exit_hooks);
        }
    });
    exit_hooks().lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
}
