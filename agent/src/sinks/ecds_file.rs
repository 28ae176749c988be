//! Hands the edge configuration to the gateway as an ECDS file: a binary
//! `DiscoveryResponse` with the filter's `TypedExtensionConfig`, written
//! atomically where the gateway's Envoy watches it (`path_config_source`).
//! The same resource is what the xDS server serves over ADS.

use crate::data_plane::DataPlane;
use crate::sinks::DataPlaneSink;
use crate::BoxFuture;
use multicloud_proto::edge_filter;
use multicloud_proto::prost::Message as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct EcdsFile {
    pub path: PathBuf,
    /// Where the gateway gets the filter module.
    pub module: edge_filter::Module,
    version: AtomicU64,
}

impl EcdsFile {
    pub fn new(path: PathBuf, module: edge_filter::Module) -> Self {
        EcdsFile { path, module, version: AtomicU64::new(0) }
    }
}

impl DataPlaneSink for EcdsFile {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let json = serde_json::to_string(&dp.edge)?;
            let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            let resp = multicloud_proto::discovery_response(
                edge_filter::EXTENSION_CONFIG_TYPE_URL,
                &version.to_string(),
                vec![edge_filter::resource(&self.module, &json)],
            );
            crate::sinks::write_atomically(&self.path, &resp.encode_to_vec())?;
            Ok(())
        })
    }
}
