//! `multicloud-images`: writes the agent's and the filter's OCI images as
//! OCI layouts (a directory and a tarball each). scripts/images.sh runs it;
//! see the library's docs for what goes in and why it is byte-for-byte
//! reproducible.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use multicloud_images::{agent_image, filter_image, Layout, Meta};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(version, about = "Writes the project's OCI images (make images)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct MetaArgs {
    /// org.opencontainers.image.version, and the layout's ref name.
    #[arg(long)]
    version: String,
    /// org.opencontainers.image.revision (the commit).
    #[arg(long)]
    revision: String,
    /// org.opencontainers.image.source.
    #[arg(long)]
    source: String,
    /// org.opencontainers.image.licenses (SPDX).
    #[arg(long)]
    licenses: String,
    /// Every timestamp in the image (SOURCE_DATE_EPOCH).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    created: u64,
    /// Writes OUT/NAME/ (an OCI layout directory) and OUT/NAME.tar.
    #[arg(long)]
    out: PathBuf,
}

impl MetaArgs {
    fn meta(&self) -> Meta {
        Meta {
            version: self.version.clone(),
            revision: self.revision.clone(),
            source: self.source.clone(),
            licenses: self.licenses.clone(),
            created: self.created,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// The agent's container image.
    Agent {
        /// The static agent binary.
        #[arg(long)]
        binary: PathBuf,
        /// The built filter module (target/filter/multicloud_filter.wasm), which
        /// the agent sends to the gateway (`--filter-module`).
        #[arg(long)]
        wasm: PathBuf,
        /// The CA bundle to install as /etc/ssl/certs/ca-certificates.crt.
        #[arg(long)]
        ca_bundle: PathBuf,
        /// Where the bundle comes from (recorded in the image's history).
        #[arg(long, default_value = "")]
        ca_origin: String,
        /// OCI architecture.
        #[arg(long, default_value = "amd64")]
        arch: String,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// The filter's Wasm OCI image (Istio WasmPlugin `url: oci://...`).
    Filter {
        /// The built module (target/filter/multicloud_filter.wasm).
        #[arg(long)]
        wasm: PathBuf,
        /// The runtime config's root id (the WasmPlugin's pluginName).
        #[arg(long, default_value = "multicloud-edge")]
        root_id: String,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Prints the image digest of a layout tarball (checking its blobs).
    Digest { tarball: PathBuf },
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn emit(name: &str, layout: &Layout, m: &MetaArgs) -> Result<()> {
    std::fs::create_dir_all(&m.out)?;
    let tarball = m.out.join(format!("{name}.tar"));
    layout.write(&m.out.join(name), &tarball, m.created)?;
    let digest = layout.digest()?;
    std::fs::write(m.out.join(format!("{name}.digest")), format!("{digest}\n"))?;
    println!("{name} {digest} {}", tarball.display());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Agent { binary, wasm, ca_bundle, ca_origin, arch, meta } => {
            let l = agent_image(&read(&binary)?, &read(&wasm)?, &read(&ca_bundle)?, &ca_origin, &arch, &meta.meta())?;
            emit("agent", &l, &meta)
        }
        Cmd::Filter { wasm, root_id, meta } => {
            let l = filter_image(&read(&wasm)?, &root_id, &meta.meta())?;
            emit("filter", &l, &meta)
        }
        Cmd::Digest { tarball } => {
            println!("{}", Layout::read_tar(&tarball)?.digest()?);
            Ok(())
        }
    }
}
