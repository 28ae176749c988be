//! An OCI registry on loopback: go-containerregistry's in-memory registry
//! (`crane registry serve`, the crane that scripts/tools.sh pins), on a
//! port the OS chooses, killed with the test.
//!
//! [`serve_filter_image`] is the piece the real-Istio tier needs: the
//! filter's Wasm image from `make images`, pushed to a registry on the
//! cluster's loopback range and named by digest, so that a WasmPlugin's
//! `url: oci://<reference>` makes istio-agent pull exactly the built module.
//! Plain HTTP: Istio's fetcher falls back to it when the registry answers
//! HTTPS with HTTP (pkg/wasm/imagefetcher.go), crane is given `--insecure`.

use crate::procs::{self, Proc};
use crate::{http, paths, wait_until};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Registry {
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on `ip`, any free port.
    pub fn start(ip: Ipv4Addr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new(paths::crane());
        cmd.args(["registry", "serve", "--address", &format!("{ip}:0")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("registry log"));
        let mut proc = procs::spawn(cmd).expect("spawn crane registry serve");
        // It logs "serving on port N" once it listens.
        let port: u16 = wait_until("crane registry serve to listen", Duration::from_secs(20), || {
            if let Some(st) = proc.try_wait() {
                return Err(format!("exited ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default()));
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.split("serving on port ").nth(1).and_then(|rest| rest.split_whitespace().next()).and_then(|p| p.parse().ok()).ok_or(text)
        });
        Registry { addr: SocketAddr::from((ip, port)), _proc: proc, _dir: dir }
    }

    /// The registry's log so far: crane logs every request it serves
    /// (`GET /v2/<repo>/blobs/<digest>`, ...).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `ip:port`, the registry part of a reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Runs crane against this registry; panics with its output on failure.
    pub fn crane(&self, args: &[&str]) -> String {
        let out = Command::new(paths::crane()).args(args).arg("--insecure").output().expect("run crane");
        assert!(out.status.success(), "crane {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pushes an OCI layout directory as `repo:tag`; returns the reference
    /// pinned by digest (`host/repo@sha256:...`) that crane reports.
    pub fn push_layout(&self, layout: &Path, repo: &str, tag: &str) -> String {
        let refs = tempfile::NamedTempFile::new().expect("tempfile");
        let dst = format!("{}/{repo}:{tag}", self.host());
        self.crane(&["push", &layout.to_string_lossy(), &dst, "--image-refs", &refs.path().to_string_lossy()]);
        let pinned = std::fs::read_to_string(refs.path()).expect("crane --image-refs").trim().to_string();
        assert!(pinned.starts_with(&format!("{}/{repo}@sha256:", self.host())), "crane pushed {pinned:?}");
        pinned
    }

    /// GET /v2/<repo>/manifests/<reference> as an OCI client asks for it:
    /// (Content-Type, body).
    pub fn manifest(&self, repo: &str, reference: &str) -> (String, Vec<u8>) {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host());
        let r = http::request("GET", &url, &[("Accept", OCI_MANIFEST)]);
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        (r.header("content-type").unwrap_or_default().to_string(), r.body)
    }

    /// GET /v2/<repo>/blobs/<digest>.
    pub fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.host());
        let r = http::get(&url);
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        r.body
    }
}

/// The filter's image served by a loopback registry.
pub struct ServedFilterImage {
    pub registry: Registry,
    /// The repository inside the registry.
    pub repo: String,
    /// `ip:port/istio-multicloud/edge-filter@sha256:...`: a WasmPlugin's
    /// `url` is `oci://` + this.
    pub reference: String,
    /// The image's (manifest's) digest, `sha256:...`.
    pub digest: String,
}

impl ServedFilterImage {
    pub fn wasmplugin_url(&self) -> String {
        format!("oci://{}", self.reference)
    }
}

/// Serves `target/images/filter` (`make images`) from a registry on `ip`,
/// tagged with the project's version and addressed by digest. The digest
/// pushed is the one `make images` printed (checked).
pub fn serve_filter_image(ip: Ipv4Addr) -> ServedFilterImage {
    let images = paths::images();
    let digest = std::fs::read_to_string(images.join("filter.digest")).expect("filter.digest (make images)").trim().to_string();
    let registry = Registry::start(ip);
    let repo = "istio-multicloud/edge-filter".to_string();
    let reference = registry.push_layout(&images.join("filter"), &repo, env!("CARGO_PKG_VERSION"));
    assert!(reference.ends_with(&format!("@{digest}")), "pushed {reference}, make images printed {digest}");
    ServedFilterImage { registry, repo, reference, digest }
}

/// `wasmfetch` (scripts/gotools/istio/wasmfetch): Istio's own Wasm image
/// fetcher (istio.io/istio/pkg/wasm, the Istio version scripts/tools.sh
/// pins), as istio-agent runs it for a WasmPlugin. Built with go once per
/// test process (Go's build cache makes a rebuild take seconds; the first
/// build downloads Istio's modules from the Go module proxy, as
/// `scripts/tools.sh istio` does).
pub fn istio_wasm_fetch() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let go = std::env::var_os("GO").map(std::path::PathBuf::from).unwrap_or_else(|| {
                let on_path = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
                if on_path {
                    "go".into()
                } else {
                    "/usr/local/go/bin/go".into()
                }
            });
            let out = paths::workspace_root().join("target/gotools/wasmfetch");
            let st = Command::new(&go)
                .current_dir(paths::workspace_root().join("scripts/gotools/istio"))
                .args(["build", "-o"])
                .arg(&out)
                .arg("./wasmfetch")
                .env("CGO_ENABLED", "0")
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-mod=readonly")
                .status()
                .unwrap_or_else(|e| panic!("run {}: {e} (Go >= 1.26 is needed; GO=path)", go.display()));
            assert!(st.success(), "go build ./wasmfetch in scripts/gotools/istio failed");
            out
        })
        .clone()
}
