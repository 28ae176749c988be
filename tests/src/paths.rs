//! Where the test bed finds what the build and bootstrap scripts produced.
//! Each can be overridden by an environment variable.

use std::path::PathBuf;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn from_env_or(var: &str, default: PathBuf, hint: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(p.exists(), "{} not found ({var} unset or wrong); {hint}", p.display());
    p
}

/// The pinned Envoy (scripts/bootstrap.sh installs it into .venv).
pub fn envoy() -> PathBuf {
    from_env_or("MULTICLOUD_ENVOY", workspace_root().join(".venv/bin/envoy"), "run scripts/bootstrap.sh")
}

/// The built gateway filter (scripts/build.sh filter).
pub fn filter_wasm() -> PathBuf {
    from_env_or("MULTICLOUD_FILTER_WASM", workspace_root().join("target/filter/multicloud_filter.wasm"), "run scripts/build.sh filter")
}

/// The project virtualenv's Python (PyJWT, cryptography).
pub fn python() -> PathBuf {
    from_env_or("MULTICLOUD_PYTHON", workspace_root().join(".venv/bin/python"), "run scripts/bootstrap.sh")
}

/// The agent binary (`cargo build -p multicloud-agent`; scripts/test.sh does).
pub fn agent() -> PathBuf {
    from_env_or("MULTICLOUD_AGENT", workspace_root().join("target/debug/multicloud-agent"), "run cargo build -p multicloud-agent")
}

/// A real-tier tool built by `scripts/tools.sh` (cached outside the checkout);
/// `scripts/test.sh` exports its path as `var`.
fn tool(var: &str, name: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is unset: the real tier needs {name}; run `eval \"$(scripts/tools.sh env)\"` (scripts/test.sh does)")
    });
    assert!(p.exists(), "{} not found ({var}); run scripts/tools.sh", p.display());
    p
}

pub fn etcd() -> PathBuf {
    tool("MULTICLOUD_ETCD", "etcd")
}

pub fn kube_apiserver() -> PathBuf {
    tool("MULTICLOUD_KUBE_APISERVER", "kube-apiserver")
}

/// kubectl (with kustomize): the machine's when it has one, else built.
pub fn kubectl() -> PathBuf {
    std::env::var_os("MULTICLOUD_KUBECTL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// Istio's CRDs (`crd-all.gen.yaml` of the pinned istio.io/istio module).
pub fn istio_crds() -> PathBuf {
    tool("MULTICLOUD_ISTIO_CRDS", "Istio's CRDs")
}

/// The Prometheus Operator's CRD directory (the pinned module's
/// `example/prometheus-operator-crd`).
pub fn prometheus_crds() -> PathBuf {
    tool("MULTICLOUD_PROMETHEUS_CRDS", "the Prometheus Operator's CRDs")
}

/// What `make images` (scripts/images.sh) wrote: agent.tar, filter.tar, the
/// layout directories and their .digest files.
pub fn images() -> PathBuf {
    from_env_or("MULTICLOUD_IMAGES", workspace_root().join("target/images"), "run scripts/images.sh (make images)")
}

/// go-containerregistry's `crane` (the loopback registry).
pub fn crane() -> PathBuf {
    tool("MULTICLOUD_CRANE", "crane")
}

pub fn pilot_discovery() -> PathBuf {
    tool("MULTICLOUD_PILOT_DISCOVERY", "pilot-discovery (istiod)")
}

pub fn pilot_agent() -> PathBuf {
    tool("MULTICLOUD_PILOT_AGENT", "pilot-agent")
}

/// One istio.io/istio snapshot that `scripts/tools.sh` builds: istiod,
/// pilot-agent and the module they come from (CRDs, bootstrap template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioBuild {
    /// The module version (a pseudo-version: the proxy serves no release tag).
    pub version: String,
    /// What it is, for people (docs/istio.md, "Istio versions").
    pub label: &'static str,
    pub discovery: PathBuf,
    pub agent: PathBuf,
    /// The module directory in the Go module cache.
    pub module: PathBuf,
}

impl IstioBuild {
    /// The pin: master of 2026-08-27 (reports 1.31-dev).
    pub fn current() -> IstioBuild {
        let crds = istio_crds();
        IstioBuild {
            version: std::env::var("MULTICLOUD_ISTIO_VERSION").unwrap_or_else(|_| "(MULTICLOUD_ISTIO_VERSION unset)".into()),
            label: "master 2026-08-27 (1.31-dev)",
            discovery: pilot_discovery(),
            agent: pilot_agent(),
            // <module>/manifests/charts/base/files/crd-all.gen.yaml
            module: crds.ancestors().nth(5).expect("the istio.io/istio module directory").to_path_buf(),
        }
    }

    /// The older snapshot: master of 2026-04-23, ten days after the 1.30
    /// branch cut.
    pub fn older() -> IstioBuild {
        IstioBuild {
            version: std::env::var("MULTICLOUD_ISTIO_OLDER_VERSION").unwrap_or_else(|_| "(MULTICLOUD_ISTIO_OLDER_VERSION unset)".into()),
            label: "master 2026-04-23 (after the 1.30 branch cut)",
            discovery: tool("MULTICLOUD_PILOT_DISCOVERY_OLDER", "pilot-discovery of the older Istio snapshot"),
            agent: tool("MULTICLOUD_PILOT_AGENT_OLDER", "pilot-agent of the older Istio snapshot"),
            module: tool("MULTICLOUD_ISTIO_OLDER_MODULE", "the older istio.io/istio module"),
        }
    }

    /// Istio's CRDs of this snapshot.
    pub fn crds(&self) -> PathBuf {
        self.module.join("manifests/charts/base/files/crd-all.gen.yaml")
    }

    /// Istio's Envoy bootstrap template of this snapshot.
    pub fn bootstrap_template(&self) -> PathBuf {
        if let Some(p) = std::env::var_os("MULTICLOUD_ISTIO_BOOTSTRAP") {
            return PathBuf::from(p);
        }
        self.module.join("tools/packaging/common/envoy_bootstrap.json")
    }
}
