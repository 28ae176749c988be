//! Tier: images (the built images, a registry on loopback, Istio's own Wasm
//! fetcher; no Envoy, no Kubernetes). Registry on cluster 126 (127.0.126.12).
//!
//! The shippable images (`make images`, scripts/images.sh): the agent's
//! container image and the filter's Wasm image. The tests read the
//! images that scripts/test.sh builds once before `cargo test`
//! (target/images; MULTICLOUD_IMAGES overrides): the agent's release build
//! for musl takes minutes, so no test builds it. The reproducibility test
//! writes the images a second time from the same binaries and commit.
//! The registry tests need `crane` (MULTICLOUD_CRANE, from `scripts/tools.sh
//! env`) and Go (Istio's fetcher is built from scripts/gotools/istio).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_e2e::registry::{self, OCI_MANIFEST};
use multicloud_e2e::{hosts, paths, SimCluster};
use multicloud_images::oci_spec::image::{Config, Descriptor, ImageConfiguration, ImageManifest};
use multicloud_images::{
    digest_of, gunzip, untar, Entry, Layout, WasmRuntimeConfig, AGENT_BINARY, AGENT_FILTER_MODULE, CA_BUNDLE, OCI_CONFIG, OCI_LAYER_GZIP,
    WASM_CONFIG, WASM_CONTENT,
};
use std::collections::BTreeSet;
use std::process::Command;

fn layout(name: &str) -> Layout {
    Layout::read_tar(&paths::images().join(format!("{name}.tar"))).unwrap()
}

fn yaml_docs(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(paths::workspace_root().join(path)).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

/// A descriptor's media type and digest as the wire has them.
fn media_type(d: &Descriptor) -> String {
    d.media_type().to_string()
}
fn digest(d: &Descriptor) -> String {
    d.digest().to_string()
}
fn manifest_media_type(m: &ImageManifest) -> String {
    m.media_type().as_ref().map(ToString::to_string).unwrap_or_default()
}
fn annotation(m: &ImageManifest, k: &str) -> String {
    m.annotations().as_ref().and_then(|a| a.get(k)).cloned().unwrap_or_default()
}

/// The agent image's layers, unpacked, with the image config and its run
/// configuration.
fn agent_files() -> (ImageConfiguration, Config, Vec<Vec<Entry>>) {
    let l = layout("agent");
    let m = l.manifest().unwrap();
    assert_eq!(manifest_media_type(&m), OCI_MANIFEST);
    assert_eq!(media_type(m.config()), OCI_CONFIG);
    let config: ImageConfiguration = serde_json::from_slice(l.blob(&digest(m.config())).unwrap()).unwrap();
    let mut layers = Vec::new();
    for (d, diff_id) in m.layers().iter().zip(config.rootfs().diff_ids()) {
        assert_eq!(media_type(d), OCI_LAYER_GZIP);
        let tar = gunzip(l.blob(&digest(d)).unwrap()).unwrap();
        assert_eq!(&digest_of(&tar), diff_id, "the config's diff_id is the uncompressed layer's digest");
        layers.push(untar(&tar).unwrap());
    }
    assert_eq!(layers.len(), config.rootfs().diff_ids().len());
    let run = config.config().clone().expect("the image config has a run configuration");
    (config, run, layers)
}

/// The config runs the entrypoint as the non-root uid/gid that
/// deploy/base/agent.yaml declares, carries the OCI labels, and the layers
/// hold the CA bundle, passwd/group, the binary and the filter module it
/// sends to the gateway: no shell, nothing else,
/// every entry owned by 0:0 and stamped with the image's creation time.
#[test]
fn the_agent_image_is_non_root_and_holds_only_its_binary_and_ca_bundle() {
    let (config, run, layers) = agent_files();
    let created = config.created().clone().unwrap_or_default();
    let ds = yaml_docs("deploy/base/agent.yaml").into_iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let sc = &ds["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(run.user().as_deref(), Some(format!("{}:{}", sc["runAsUser"], sc["runAsGroup"]).as_str()), "the image's user is the pod's");
    assert_ne!(sc["runAsUser"], 0);
    assert_eq!(run.entrypoint().as_deref(), Some([AGENT_BINARY.to_string()].as_slice()));
    assert_eq!((config.os().to_string(), config.architecture().to_string()), ("linux".to_string(), "amd64".to_string()));
    let labels = run.labels().clone().unwrap_or_default();
    for k in ["source", "version", "licenses", "revision", "created"] {
        let v = labels.get(&format!("org.opencontainers.image.{k}")).map(String::as_str).unwrap_or_default();
        assert!(!v.is_empty(), "label org.opencontainers.image.{k} missing: {labels:?}");
    }
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.licenses"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(labels["org.opencontainers.image.created"], created);

    let stamps = layers.iter().flatten().map(|e| e.mtime).collect::<BTreeSet<_>>();
    assert_eq!(stamps.len(), 1, "one timestamp for every entry: {stamps:?}");
    assert_eq!(multicloud_images::rfc3339(stamps.into_iter().next().unwrap()), created);
    let mut files = BTreeSet::new();
    for e in layers.iter().flatten() {
        assert_eq!((e.uid, e.gid), (0, 0), "{} owned by 0:0", e.path);
        let base = e.path.rsplit('/').next().unwrap();
        assert!(
            !["sh", "bash", "dash", "ash", "zsh", "busybox", "toybox", "su", "sudo"].contains(&base),
            "{} in the image: it must have no shell",
            e.path
        );
        if !e.dir {
            files.insert(e.path.as_str());
        }
    }
    let want = [
        "etc/group",
        "etc/passwd",
        CA_BUNDLE.trim_start_matches('/'),
        AGENT_BINARY.trim_start_matches('/'),
        AGENT_FILTER_MODULE.trim_start_matches('/'),
    ];
    assert_eq!(files, BTreeSet::from(want), "the image's files");
    let file = |p: &str| layers.iter().flatten().find(|e| e.path == p.trim_start_matches('/')).unwrap();
    let bundle = String::from_utf8(file(CA_BUNDLE).data.clone()).unwrap();
    assert!(bundle.matches("-----BEGIN CERTIFICATE-----").count() > 50, "a system CA bundle");
    let passwd = String::from_utf8(file("/etc/passwd").data.clone()).unwrap();
    assert!(passwd.contains(&format!(":{}:{}:", sc["runAsUser"], sc["runAsGroup"])), "{passwd}");
    assert_eq!(file(AGENT_BINARY).mode & 0o7777, 0o755);
    // The module deploy/'s `--filter-module` names, byte for byte the built one.
    let ds_args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(ds_args.contains(&format!("--filter-module={AGENT_FILTER_MODULE}")), "deploy/ sends this module: {ds_args}");
    assert_eq!(file(AGENT_FILTER_MODULE).data, std::fs::read(paths::filter_wasm()).unwrap(), "the built filter module");
}

/// Whether an ELF64 file has a PT_INTERP program header (asks for a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert!(elf.starts_with(b"\x7fELF\x02\x01"), "a little-endian ELF64 file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap()) == 3)
}

/// The binary taken out of the image's layer is static and runs here:
/// `--version` names the workspace version, `crd` prints the CRD that
/// deploy/ ships.
#[test]
fn the_binary_from_the_agent_image_runs_here() {
    let (_, _, layers) = agent_files();
    let bin = layers.iter().flatten().find(|e| e.path == AGENT_BINARY.trim_start_matches('/')).unwrap();
    assert!(!has_interpreter(&bin.data), "the agent is statically linked (no dynamic loader needed on the node)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multicloud-agent");
    std::fs::write(&path, &bin.data).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&path).args(args).env_clear().output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&["--version"]).trim(), format!("multicloud-agent {}", env!("CARGO_PKG_VERSION")));
    let crd = std::fs::read_to_string(paths::workspace_root().join("deploy/crd/istiomulticlouds.yaml")).unwrap();
    assert_eq!(run(&["crd"]), crd);
}

/// The filter image is the "oci" variant of the Wasm image spec that
/// Istio's fetcher takes (pkg/wasm/imagefetcher.go): an OCI manifest with
/// exactly two layers, one `application/vnd.module.wasm.content.layer.v1+wasm`
/// that is the built module byte for byte (same sha256), one runtime config
/// naming the WasmPlugin's pluginName as root id.
#[test]
fn the_filter_image_is_the_built_module_in_istios_wasm_format() {
    let l = layout("filter");
    let m = l.manifest().unwrap();
    assert_eq!(manifest_media_type(&m), OCI_MANIFEST);
    assert_eq!(media_type(m.config()), WASM_CONFIG);
    assert_eq!(m.layers().len(), 2, "Istio's oci-variant fetcher wants exactly two layers");
    let wasm = std::fs::read(paths::filter_wasm()).unwrap();
    let content: Vec<_> = m.layers().iter().filter(|d| media_type(d) == WASM_CONTENT).collect();
    assert_eq!(content.len(), 1);
    assert_eq!(digest(content[0]), digest_of(&wasm), "the layer's digest is the module's sha256");
    assert_eq!(l.blob(&digest(content[0])).unwrap(), wasm.as_slice());
    let rc = m.layers().iter().find(|d| media_type(d) == WASM_CONFIG).unwrap();
    assert_eq!(digest(rc), digest(m.config()));
    let rc: WasmRuntimeConfig = serde_json::from_slice(l.blob(&digest(rc)).unwrap()).unwrap();
    assert_eq!(rc.kind, "envoy_proxy");
    let plugin = yaml_docs("deploy/components/wasmplugin/wasmplugin.yaml").remove(0);
    assert_eq!(rc.config.root_ids, [plugin["spec"]["pluginName"].as_str().unwrap()]);
    for abi in &rc.abi_versions {
        assert!(wasm.windows(abi.len()).any(|w| w == abi.as_bytes()), "the module exports {abi}");
    }
    assert_eq!(annotation(&m, "org.opencontainers.image.version"), env!("CARGO_PKG_VERSION"));
}

/// scripts/images.sh run again for the same commit and binaries writes the
/// same bytes: same digests, same tarballs.
#[test]
fn two_builds_of_the_same_commit_give_identical_images() {
    let out = tempfile::tempdir().unwrap();
    let st =
        Command::new(paths::workspace_root().join("scripts/images.sh")).args(["--no-build", "--out"]).arg(out.path()).status().unwrap();
    assert!(st.success());
    let built = layout("filter").manifest().unwrap();
    let again = Layout::read_tar(&out.path().join("filter.tar")).unwrap().manifest().unwrap();
    for k in ["org.opencontainers.image.revision", "org.opencontainers.image.created"] {
        assert_eq!(
            annotation(&built, k),
            annotation(&again, k),
            "{} is stale (another commit or tree): run scripts/images.sh",
            paths::images().display()
        );
    }
    for name in ["agent", "filter"] {
        let a = std::fs::read(paths::images().join(format!("{name}.tar"))).unwrap();
        let b = std::fs::read(out.path().join(format!("{name}.tar"))).unwrap();
        assert_eq!(layout(name).digest().unwrap(), Layout::read_tar(&out.path().join(format!("{name}.tar"))).unwrap().digest().unwrap());
        assert!(a == b, "{name}.tar differs between two builds of the same commit");
    }
}

/// The filter image pushed to a registry on loopback is pulled back by
/// digest as an OCI client asks for it: the manifest's bytes hash to the
/// digest `make images` printed, its content layer is the built module. The
/// agent image pushed next to it passes crane's own validation (every
/// layer's digest and diff_id recomputed by go-containerregistry).
#[test]
fn the_images_are_served_by_digest_from_a_loopback_registry() {
    let served = registry::serve_filter_image(SimCluster(126).ip(hosts::REGISTRY));
    assert!(served.wasmplugin_url().starts_with("oci://127.0.126.12:"));
    let (ctype, body) = served.registry.manifest(&served.repo, &served.digest);
    assert_eq!(ctype, OCI_MANIFEST);
    assert_eq!(digest_of(&body), served.digest);
    let m: ImageManifest = serde_json::from_slice(&body).unwrap();
    let content = m.layers().iter().find(|d| media_type(d) == WASM_CONTENT).unwrap();
    let wasm = std::fs::read(paths::filter_wasm()).unwrap();
    assert!(served.registry.blob(&served.repo, &digest(content)) == wasm, "the served module is the built one");
    let (_, by_tag) = served.registry.manifest(&served.repo, env!("CARGO_PKG_VERSION"));
    assert_eq!(digest_of(&by_tag), served.digest, "the tag names the same image");

    let agent = served.registry.push_layout(&paths::images().join("agent"), "istio-multicloud/agent", env!("CARGO_PKG_VERSION"));
    let digest = std::fs::read_to_string(paths::images().join("agent.digest")).unwrap();
    assert!(agent.ends_with(digest.trim()), "{agent}");
    served.registry.crane(&["validate", "--remote", &agent]);
    let config: serde_json::Value = serde_json::from_str(&served.registry.crane(&["config", &agent])).unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
}

/// Istio's own fetcher (istio.io/istio/pkg/wasm at the pinned version, the
/// code istio-agent runs for a WasmPlugin `url: oci://...`) pulls the filter
/// image by digest from the loopback registry, sees the digest `make images`
/// printed and extracts exactly the built module; the same artifact
/// without its runtime-config layer is refused.
#[test]
fn istios_fetcher_pulls_the_built_module_by_digest() {
    let served = registry::serve_filter_image(SimCluster(126).ip(hosts::REGISTRY));
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("fetched.wasm");
    let out = Command::new(registry::istio_wasm_fetch()).arg(&served.reference).arg(&module).output().unwrap();
    assert!(out.status.success(), "Istio's fetcher refused the image: {}", String::from_utf8_lossy(&out.stderr));
    // Istio's log shares stdout; the digest is the last line.
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().last().unwrap_or_default(), served.digest, "the digest Istio keys its cache by: {stdout}");
    let wasm = std::fs::read(paths::filter_wasm()).unwrap();
    assert!(std::fs::read(&module).unwrap() == wasm, "Istio extracted the built module byte for byte");

    // Why the image carries the runtime-config layer: the same artifact
    // with the module as its only layer is refused by this Istio.
    let mut single = layout("filter");
    let mut m = single.manifest().unwrap();
    m.layers_mut().retain(|d| media_type(d) == WASM_CONTENT);
    let body = serde_json::to_vec(&m).unwrap();
    let mut manifests = single.index.manifests().clone();
    manifests[0].set_digest(digest_of(&body).parse().unwrap());
    manifests[0].set_size(body.len() as u64);
    single.index.set_manifests(manifests);
    single.blobs.insert(digest_of(&body), body);
    single.write(&dir.path().join("single"), &dir.path().join("single.tar"), 0).unwrap();
    let reference = served.registry.push_layout(&dir.path().join("single"), "istio-multicloud/single-layer", "0");
    let out = Command::new(registry::istio_wasm_fetch()).arg(&reference).arg(dir.path().join("x.wasm")).output().unwrap();
    assert!(!out.status.success(), "a one-layer Wasm artifact was accepted: update the image format's notes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("number of layers must be 2"), "{}", String::from_utf8_lossy(&out.stderr));
}
