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

/// What `make images` (scripts/images.sh) wrote: agent.tar, filter.tar, the
/// layout directories and their .digest files.
pub fn images() -> PathBuf {
    from_env_or("MULTICLOUD_IMAGES", workspace_root().join("target/images"), "run scripts/images.sh (make images)")
}

/// go-containerregistry's `crane` (MULTICLOUD_CRANE, as `scripts/tools.sh env`
/// exports it; otherwise `scripts/tools.sh crane` finds or builds it).
pub fn crane() -> PathBuf {
    if let Some(p) = std::env::var_os("MULTICLOUD_CRANE") {
        return from_env_or("MULTICLOUD_CRANE", PathBuf::from(p), "run scripts/tools.sh crane");
    }
    let out = std::process::Command::new(workspace_root().join("scripts/tools.sh"))
        .arg("crane")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/tools.sh crane");
    assert!(out.status.success(), "scripts/tools.sh crane failed");
    // "crane <version> <path>"
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = line.split_whitespace().nth(2).unwrap_or_else(|| panic!("scripts/tools.sh crane printed {line:?}"));
    PathBuf::from(path)
}
