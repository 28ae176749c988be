//! Where the reconciler's results go, and the two traits it hands them
//! through. Data plane sinks ([`DataPlaneSink`], in the order the agent runs
//! them): the xDS port's client roots ([`client_roots`]), the xDS snapshots
//! ([`xds`]), Istio remote secrets ([`remote_secret`]), the edge's ECDS file
//! ([`ecds_file`]), the Istio `WasmPlugin` ([`wasmplugin`]), Istio's shared
//! mesh config ([`mesh_config`]: peers' roots and networks), the data plane
//! state for the other replicas ([`state`]), and readiness ([`ready`], last). Status sinks ([`StatusSink`]): [`status`].

pub mod client_roots;
pub mod ecds_file;
pub mod mesh_config;
pub mod ready;
pub mod remote_secret;
pub mod state;
pub mod status;
pub mod wasmplugin;
pub mod xds;

use crate::crd::IstioMulticloudStatus;
use crate::data_plane::DataPlane;
use crate::BoxFuture;
use std::path::Path;

/// Receives every new data plane state (the edge configuration validated).
pub trait DataPlaneSink: Send + Sync {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>>;
}

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
