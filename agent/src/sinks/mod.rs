//! Where the reconciler's results go. Data plane sinks
//! ([`crate::reconcile::DataPlaneSink`]): the xDS snapshots ([`xds`]), the
//! edge's ECDS file ([`ecds_file`]), Istio remote secrets ([`remote_secret`]),
//! the Istio `WasmPlugin` ([`wasmplugin`]), Istio's shared mesh config
//! ([`mesh_config`]: peers' roots and networks). Status sinks ([`StatusSink`]):
//! [`status`].

pub mod ecds_file;
pub mod mesh_config;
pub mod remote_secret;
pub mod status;
pub mod wasmplugin;
pub mod xds;

use crate::crd::IstioMulticloudStatus;
use crate::BoxFuture;
use std::path::Path;

/// Where status goes: the object's status subresource (Kubernetes) or the
/// status file / HTTP endpoint (standalone).
pub trait StatusSink: Send + Sync {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Writes `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
