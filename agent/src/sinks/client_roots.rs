//! The xDS port's client roots as a data plane sink: every new data plane
//! state carries this cluster's root (the local facts' `rootCA`), and the
//! port trusts exactly that from then on (`crate::xds::tls`).

use super::DataPlaneSink;
use crate::data_plane::DataPlane;
use crate::xds::tls::XdsTls;
use crate::BoxFuture;
use std::sync::Arc;

/// Keeps the xDS port's client roots equal to this cluster's root as the
/// local facts state it (standalone file `rootCA`, or Kubernetes
/// `istio-ca-root-cert`). Runs before the xDS sink, so no proxy is served a
/// snapshot built from facts whose root the port does not yet trust.
pub struct ClientRootsSink(pub Arc<XdsTls>);

impl DataPlaneSink for ClientRootsSink {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match self.0.set_client_roots(&dp.local.root_ca) {
                Ok(true) => {
                    tracing::info!("xDS port: client certificates must now chain to this cluster's root CA as the local facts state it")
                }
                Ok(false) => {}
                Err(e) => {
                    // The previous roots stay in force; the edge configuration
                    // validation normally refuses such facts before this.
                    anyhow::bail!("xDS port keeps its previous client roots: {e}; fix this cluster's rootCA (istio-ca-root-cert)")
                }
            }
            Ok(())
        })
    }
}
