//! Deterministic OCI image layouts for the project's two shippable images
//! (`make images`, scripts/images.sh):
//!
//! - [`agent_image`]: the agent's container image: one layer with the CA
//!   bundle, `/etc/passwd` and `/etc/group` naming the non-root user 65532,
//!   one layer with the static binary; no shell, no package manager.
//! - [`filter_image`]: the gateway filter as a Wasm OCI image in the *oci*
//!   variant that Istio's WasmPlugin fetcher accepts (see [`WASM_CONTENT`]).
//!
//! Why the project writes OCI layouts itself instead of driving `crane`:
//! crane builds images only against a registry (`crane append`/`mutate`
//! push, or write Docker tarballs), cannot give a layer a custom media type
//! (the Wasm image needs two), and writes no OCI layout. Here every byte is a
//! function of the inputs: tar entries sorted, uid/gid 0, no user/group
//! names, every mtime and the config's `created` set to one given time
//! (SOURCE_DATE_EPOCH), gzip with mtime 0 and no file name, the documents
//! oci-spec's types written as canonical JSON (keys sorted). crane
//! pushes the result (`crane push target/images/agent REGISTRY/...`).
//!
//! [`Layout`] reads a layout tarball back (the tests use it) and checks
//! every blob against its digest.

use anyhow::{anyhow, bail, ensure, Context, Result};
/// The OCI document types the layouts are made of (callers read them back).
pub use oci_spec;
use oci_spec::image::{
    Arch, Config, ConfigBuilder, Descriptor, Digest as OciDigest, HistoryBuilder, ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

/// The media types on the wire (what the tests compare against); the
/// documents themselves are oci-spec's types ([`oci_spec::image`]).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The Wasm image's runtime configuration ("oci" variant of the Wasm image
/// specification, github.com/solo-io/wasm spec/spec.md), used as the
/// manifest's config and as one of its two layers.
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The layer that is the module itself, byte for byte.
///
/// Istio's fetcher (istio/istio pkg/wasm/imagefetcher.go,
/// `extractOCIArtifactImage`, checked at the Istio version
/// scripts/tools.sh pins) takes an OCI manifest whose layers are exactly two,
/// one of them of this media type, and returns that layer's raw bytes as the
/// module. A single-layer artifact is refused there ("number of layers must
/// be 2"), hence the runtime-config layer. (Its other accepted form, the
/// "compat" variant, is a gzip tar layer holding `plugin.wasm`; that would
/// not let the layer's digest be the module's sha256.)
pub const WASM_CONTENT: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

pub const ANN_REF_NAME: &str = oci_spec::image::ANNOTATION_REF_NAME;

/// The non-root user of the agent image; deploy/base/agent.yaml runs as
/// this uid/gid (`restricted` Pod Security Standard).
pub const AGENT_UID: u32 = 65532;
pub const AGENT_BINARY: &str = "/usr/local/bin/multicloud-agent";
/// The filter module in the agent's image: deploy/'s `--filter-module` sends
/// it to the gateway inside the filter's ECDS resource.
pub const AGENT_FILTER_MODULE: &str = "/usr/share/istio-multicloud/multicloud_filter.wasm";
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

// ---- JSON documents ------------------------------------------------------------

/// The Wasm image's runtime configuration (spec/spec.md of solo-io/wasm),
/// which oci-spec does not model.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WasmRuntimeConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub abi_versions: Vec<String>,
    pub config: WasmRootIds,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WasmRootIds {
    pub root_ids: Vec<String>,
}

/// Canonical JSON: every object's keys sorted, at every depth. oci-spec
/// keeps annotations and labels in `HashMap`s, whose order changes from run
/// to run; the image's digests must not.
fn json(v: &impl Serialize) -> Result<Vec<u8>> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                let mut kv: Vec<(String, Value)> = m.into_iter().collect();
                kv.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(kv.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
            v => v,
        }
    }
    Ok(serde_json::to_vec(&sorted(serde_json::to_value(v)?))?)
}

fn oci<T>(r: std::result::Result<T, oci_spec::OciSpecError>) -> Result<T> {
    r.map_err(|e| anyhow!("OCI document: {e}"))
}

// ---- time ----------------------------------------------------------------------

/// RFC 3339 UTC for a Unix time, to the second.
pub fn rfc3339(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch)).to_string()
}

// ---- tar -------------------------------------------------------------------------

/// One entry of a layer. Paths are relative (`etc/passwd`); directories end
/// without a slash here and get one in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub dir: bool,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Self {
        Entry { path: path.into(), mode, uid: 0, gid: 0, mtime: 0, dir: true, data: vec![] }
    }
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Entry { path: path.into(), mode, uid: 0, gid: 0, mtime: 0, dir: false, data }
    }
}

/// A POSIX ustar archive of `entries`, sorted by path, owned by 0:0 with no
/// owner names, every mtime `mtime`.
pub fn tar(entries: &[Entry], mtime: u64) -> Result<Vec<u8>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut b = tar::Builder::new(Vec::new());
    for e in sorted {
        let mut h = tar::Header::new_ustar();
        let name = if e.dir { format!("{}/", e.path) } else { e.path.clone() };
        h.set_path(&name).with_context(|| format!("tar path {name}"))?;
        h.set_entry_type(if e.dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, e.data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// Every entry of a tar archive, in archive order.
pub fn untar(bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let h = e.header().clone();
        let path = e.path()?.to_string_lossy().trim_end_matches('/').to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push(Entry { path, mode: h.mode()?, uid: h.uid()?, gid: h.gid()?, mtime: h.mtime()?, dir: h.entry_type().is_dir(), data });
    }
    Ok(out)
}

/// gzip with no name, mtime 0 and a fixed level: the same bytes for the same
/// input (for a given flate2/miniz_oxide, pinned by Cargo.lock).
pub fn gzip(b: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::new(9));
    e.write_all(b)?;
    Ok(e.finish()?)
}

pub fn gunzip(b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out)?;
    Ok(out)
}

// ---- layouts ---------------------------------------------------------------------

/// An OCI image layout with one image: its blobs and the index entry.
#[derive(Debug, Clone)]
pub struct Layout {
    pub index: ImageIndex,
    /// digest ("sha256:...") -> content
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    fn new() -> Result<Self> {
        let index = oci(ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(vec![]).build())?;
        Ok(Layout { index, blobs: BTreeMap::new() })
    }

    fn add(&mut self, media_type: &str, bytes: Vec<u8>, annotations: BTreeMap<String, String>) -> Result<Descriptor> {
        let digest = digest_of(&bytes);
        let mut d = Descriptor::new(MediaType::from(media_type), bytes.len() as u64, oci(OciDigest::from_str(&digest))?);
        if !annotations.is_empty() {
            d.set_annotations(Some(annotations.into_iter().collect::<HashMap<_, _>>()));
        }
        self.blobs.insert(digest, bytes);
        Ok(d)
    }

    fn set_manifest(&mut self, m: &ImageManifest, ref_name: &str) -> Result<()> {
        let ann = BTreeMap::from([(ANN_REF_NAME.to_string(), ref_name.to_string())]);
        let d = self.add(OCI_MANIFEST, json(m)?, ann)?;
        self.index.set_manifests(vec![d]);
        Ok(())
    }

    /// The files of the layout, by path: `oci-layout`, `index.json`,
    /// `blobs/sha256/<hex>`.
    pub fn files(&self) -> Result<Vec<Entry>> {
        let mut v = vec![
            Entry::file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            Entry::file("index.json", 0o644, json(&self.index)?),
            Entry::dir("blobs", 0o755),
            Entry::dir("blobs/sha256", 0o755),
        ];
        for (d, b) in &self.blobs {
            let hex = d.strip_prefix("sha256:").ok_or_else(|| anyhow!("digest {d}"))?;
            v.push(Entry::file(&format!("blobs/sha256/{hex}"), 0o644, b.clone()));
        }
        Ok(v)
    }

    /// Writes the layout as a directory (what `crane push DIR REF` takes) and
    /// as a tarball (what `skopeo copy oci-archive:FILE` takes).
    pub fn write(&self, dir: &Path, tarball: &Path, mtime: u64) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let files = self.files()?;
        for e in &files {
            let p = dir.join(&e.path);
            if e.dir {
                std::fs::create_dir_all(&p)?;
            } else {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&p, &e.data).with_context(|| format!("writing {}", p.display()))?;
            }
        }
        std::fs::write(tarball, tar(&files, mtime)?).with_context(|| format!("writing {}", tarball.display()))?;
        Ok(())
    }

    /// Reads a layout tarball, checking every blob against its name.
    pub fn read_tar(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut index = None;
        let mut blobs = BTreeMap::new();
        let mut layout_file = false;
        for e in untar(&bytes)? {
            if e.dir {
                continue;
            }
            match e.path.as_str() {
                "index.json" => index = Some(serde_json::from_slice::<ImageIndex>(&e.data).context("index.json")?),
                "oci-layout" => layout_file = true,
                p => {
                    let hex = p.strip_prefix("blobs/sha256/").ok_or_else(|| anyhow!("unexpected file {p} in the layout"))?;
                    ensure!(sha256_hex(&e.data) == hex, "blob {p} does not match its digest");
                    blobs.insert(format!("sha256:{hex}"), e.data);
                }
            }
        }
        ensure!(layout_file, "no oci-layout file");
        let index = index.ok_or_else(|| anyhow!("no index.json"))?;
        Ok(Layout { index, blobs })
    }

    pub fn blob(&self, digest: &str) -> Result<&[u8]> {
        self.blobs.get(digest).map(Vec::as_slice).ok_or_else(|| anyhow!("blob {digest} missing"))
    }

    /// The index's one manifest.
    pub fn manifest_descriptor(&self) -> Result<&Descriptor> {
        match self.index.manifests().as_slice() {
            [d] => Ok(d),
            ds => bail!("the index lists {} manifests, not one", ds.len()),
        }
    }

    /// The image's digest: its manifest's, what a registry serves it by.
    pub fn digest(&self) -> Result<String> {
        Ok(self.manifest_descriptor()?.digest().to_string())
    }

    pub fn manifest(&self) -> Result<ImageManifest> {
        let d = self.manifest_descriptor()?;
        Ok(serde_json::from_slice(self.blob(d.digest().as_ref())?)?)
    }
}

/// What both images are labelled with.
#[derive(Debug, Clone)]
pub struct Meta {
    pub version: String,
    pub revision: String,
    pub source: String,
    pub licenses: String,
    /// SOURCE_DATE_EPOCH: every timestamp in the image.
    pub created: u64,
}

impl Meta {
    fn labels(&self, title: &str, description: &str) -> BTreeMap<String, String> {
        [
            ("created", rfc3339(self.created)),
            ("description", description.to_string()),
            ("licenses", self.licenses.clone()),
            ("revision", self.revision.clone()),
            ("source", self.source.clone()),
            ("title", title.to_string()),
            ("version", self.version.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v))
        .collect()
    }
}

fn passwd_group() -> (Vec<u8>, Vec<u8>) {
    let u = AGENT_UID;
    (
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{u}:{u}:nonroot:/nonexistent:/sbin/nologin\n").into_bytes(),
        format!("root:x:0:\nnonroot:x:{u}:\n").into_bytes(),
    )
}

/// The agent's image: `binary` (static) at [`AGENT_BINARY`] as the
/// entrypoint, the filter module at [`AGENT_FILTER_MODULE`], `ca_bundle` at
/// [`CA_BUNDLE`], user 65532:65532.
pub fn agent_image(binary: &[u8], wasm: &[u8], ca_bundle: &[u8], ca_origin: &str, arch: &str, meta: &Meta) -> Result<Layout> {
    ensure!(wasm.starts_with(b"\0asm"), "the filter module is not a WebAssembly module");
    let (passwd, group) = passwd_group();
    let base = vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/group", 0o644, group),
        Entry::file("etc/passwd", 0o644, passwd),
        Entry::dir("etc/ssl", 0o755),
        Entry::dir("etc/ssl/certs", 0o755),
        Entry::file(CA_BUNDLE.trim_start_matches('/'), 0o644, ca_bundle.to_vec()),
        Entry::dir("tmp", 0o1777),
    ];
    let app = vec![
        Entry::dir("usr", 0o755),
        Entry::dir("usr/local", 0o755),
        Entry::dir("usr/local/bin", 0o755),
        Entry::file(AGENT_BINARY.trim_start_matches('/'), 0o755, binary.to_vec()),
        Entry::dir("usr/share", 0o755),
        Entry::dir("usr/share/istio-multicloud", 0o755),
        Entry::file(AGENT_FILTER_MODULE.trim_start_matches('/'), 0o644, wasm.to_vec()),
    ];
    let labels = meta.labels("multicloud-agent", "Istio Multicloud node-local agent");
    let run = oci(ConfigBuilder::default()
        .user(format!("{AGENT_UID}:{AGENT_UID}"))
        .entrypoint(vec![AGENT_BINARY.to_string()])
        .env(vec!["PATH=/usr/local/bin".to_string(), format!("SSL_CERT_FILE={CA_BUNDLE}")])
        .working_dir("/")
        .labels(labels.clone().into_iter().collect::<HashMap<_, _>>())
        .build())?;
    let history = [
        format!("multicloud-images: /etc/passwd, /etc/group, {CA_BUNDLE} ({ca_origin})"),
        format!("multicloud-images: {AGENT_BINARY} (static), {AGENT_FILTER_MODULE}"),
    ];
    write_image(&[&base, &app], run, &history, labels, arch, meta)
}

/// Writes an image of `layers` (each a list of entries, made into a
/// reproducible gzipped tar), run as `run`, one history line per layer,
/// into a new layout as its one manifest.
fn write_image(
    layers: &[&[Entry]],
    run: Config,
    history: &[String],
    labels: BTreeMap<String, String>,
    arch: &str,
    meta: &Meta,
) -> Result<Layout> {
    let mut layout = Layout::new()?;
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let t = tar(l, meta.created)?;
        diff_ids.push(digest_of(&t));
        descriptors.push(layout.add(OCI_LAYER_GZIP, gzip(&t)?, BTreeMap::new())?);
    }
    let created = rfc3339(meta.created);
    let history = history
        .iter()
        .map(|by| oci(HistoryBuilder::default().created(created.clone()).created_by(by.clone()).build()))
        .collect::<Result<Vec<_>>>()?;
    let config = oci(ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(arch))
        .os(Os::Linux)
        .config(run)
        .rootfs(oci(RootFsBuilder::default().typ("layers").diff_ids(diff_ids).build())?)
        .history(history)
        .build())?;
    let config = layout.add(OCI_CONFIG, json(&config)?, BTreeMap::new())?;
    let m = manifest(config, descriptors, labels)?;
    layout.set_manifest(&m, &meta.version)?;
    Ok(layout)
}

/// An OCI image manifest (schema 2) with these config, layers and annotations.
fn manifest(config: Descriptor, layers: Vec<Descriptor>, annotations: BTreeMap<String, String>) -> Result<ImageManifest> {
    oci(ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .annotations(annotations.into_iter().collect::<HashMap<_, _>>())
        .build())
}

/// The filter's Wasm image ("oci" variant): manifest config and first layer
/// the runtime configuration ([`WASM_CONFIG`]), second layer the module
/// itself ([`WASM_CONTENT`]), its digest the module's sha256.
pub fn filter_image(wasm: &[u8], root_id: &str, meta: &Meta) -> Result<Layout> {
    ensure!(wasm.starts_with(b"\0asm"), "not a WebAssembly module");
    let runtime = WasmRuntimeConfig {
        kind: "envoy_proxy".into(),
        abi_versions: vec!["proxy_abi_version_0_2_1".into()],
        config: WasmRootIds { root_ids: vec![root_id.into()] },
    };
    let mut layout = Layout::new()?;
    let title = |t: &str| BTreeMap::from([(oci_spec::image::ANNOTATION_TITLE.to_string(), t.to_string())]);
    let runtime = json(&runtime)?;
    let config = layout.add(WASM_CONFIG, runtime.clone(), BTreeMap::new())?;
    let layers = vec![
        layout.add(WASM_CONTENT, wasm.to_vec(), title("plugin.wasm"))?,
        layout.add(WASM_CONFIG, runtime, title("runtime-config.json"))?,
    ];
    let labels = meta.labels("multicloud-edge-filter", "Istio Multicloud gateway filter (proxy-wasm)");
    let m = manifest(config, layers, labels)?;
    layout.set_manifest(&m, &meta.version)?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn unix_times_are_written_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    /// oci-spec keeps annotations in `HashMap`s (a new order each time one
    /// is made): the written documents, and so the digests, must not move.
    #[test]
    fn the_same_inputs_give_the_same_digest_and_sorted_json() -> Result<()> {
        let meta = Meta {
            version: "0.1.0".into(),
            revision: "abc".into(),
            source: "https://example.invalid/src".into(),
            licenses: "Apache-2.0".into(),
            created: 1_795_000_000,
        };
        let wasm = b"\0asm\x01\0\0\0proxy_abi_version_0_2_1".to_vec();
        let digests = (0..8).map(|_| filter_image(&wasm, "root", &meta).and_then(|l| l.digest())).collect::<Result<BTreeSet<_>>>()?;
        assert_eq!(digests.len(), 1, "{digests:?}");
        let l = filter_image(&wasm, "root", &meta)?;
        let text = String::from_utf8(l.blob(&l.digest()?)?.to_vec())?;
        // serde_json's Value keeps its keys sorted: re-serialized, a sorted document is unchanged.
        let resorted = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text)?)?;
        assert_eq!(text, resorted, "keys sorted at every depth");
        let m = l.manifest()?;
        assert_eq!(m.layers().iter().map(|d| d.media_type().to_string()).collect::<Vec<_>>(), [WASM_CONTENT, WASM_CONFIG]);
        Ok(())
    }

    #[test]
    fn tar_is_sorted_owned_by_root_and_stamped() -> Result<()> {
        let t = tar(&[Entry::file("b", 0o644, b"2".to_vec()), Entry::dir("a", 0o755)], 42)?;
        let e = untar(&t)?;
        assert_eq!(e.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(e.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 42));
        assert_eq!(t, tar(&[Entry::dir("a", 0o755), Entry::file("b", 0o644, b"2".to_vec())], 42)?);
        Ok(())
    }
}

/// What [`plain_image`] runs: the image config's entrypoint, user and
/// environment.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub entrypoint: Vec<String>,
    /// `uid:gid`, or empty for the runtime's default (root).
    pub user: String,
    pub env: Vec<String>,
}

/// A single-layer image of the given files (parents of each file are added
/// as directories), written with the same reproducible rules as the
/// shippable images. The test bed builds its node-tier images with it (the
/// pause image, the Istio gateway image from pilot-agent and Envoy, CoreDNS):
/// they are not shipped.
pub fn plain_image(title: &str, files: &[Entry], run: &RunSpec, arch: &str, meta: &Meta) -> Result<Layout> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for f in files {
        let mut parent = Path::new(&f.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let s = p.to_string_lossy().into_owned();
            entries.entry(s.clone()).or_insert_with(|| Entry::dir(&s, 0o755));
            parent = p.parent();
        }
        entries.insert(f.path.clone(), f.clone());
    }
    let all: Vec<Entry> = entries.into_values().collect();
    let labels = meta.labels(title, title);
    let mut cfg = ConfigBuilder::default().entrypoint(run.entrypoint.clone()).env(run.env.clone()).working_dir("/");
    if !run.user.is_empty() {
        cfg = cfg.user(run.user.clone());
    }
    let run = oci(cfg.labels(labels.clone().into_iter().collect::<HashMap<_, _>>()).build())?;
    write_image(&[&all], run, &[format!("multicloud-images: {title}")], labels, arch, meta)
}
