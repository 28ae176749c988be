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

/// Istio's Envoy bootstrap template (`tools/packaging/common/envoy_bootstrap.json`
/// of the pinned istio.io/istio module, which also holds [`istio_crds`]; the
/// proxy image has it at /var/lib/istio/envoy/envoy_bootstrap_tmpl.json).
/// `MULTICLOUD_ISTIO_BOOTSTRAP` overrides.
pub fn istio_bootstrap_template() -> PathBuf {
    if let Some(p) = std::env::var_os("MULTICLOUD_ISTIO_BOOTSTRAP") {
        return PathBuf::from(p);
    }
    let crds = istio_crds();
    // <module>/manifests/charts/base/files/crd-all.gen.yaml
    let module = crds.ancestors().nth(5).expect("the istio.io/istio module directory").to_path_buf();
    let p = module.join("tools/packaging/common/envoy_bootstrap.json");
    assert!(p.exists(), "{} not found (MULTICLOUD_ISTIO_CRDS does not point into the istio.io/istio module?)", p.display());
    p
}
