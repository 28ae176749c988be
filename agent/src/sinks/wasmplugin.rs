//! The edge configuration written into an Istio `WasmPlugin`'s
//! `spec.pluginConfig` (deploy/overlays/wasmplugin).

use crate::kube::lease::LeaseGuard;
use crate::kube::FIELD_MANAGER;
use crate::BoxFuture;
use anyhow::{bail, Context as _, Result};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;

/// Where the filter is attached by an Istio `WasmPlugin` (overlay
/// `deploy/overlays/wasmplugin`) instead of the `EnvoyFilter`: istiod
/// delivers the module and `spec.pluginConfig` over its own ECDS, so the
/// agent cannot push the configuration itself. Instead the lease holder
/// writes the edge configuration (public and private documents, peers'
/// public keys: nothing secret) into that field by server-side apply
/// (field manager `istio-multicloud-agent`, so a key it drops is removed,
/// and nobody else's fields are touched), whenever it changes. The
/// WasmPlugin must exist; the agent never creates it.
pub struct WasmPluginSink {
    api: Api<kube::api::DynamicObject>,
    name: String,
    lease: Arc<LeaseGuard>,
    last: tokio::sync::Mutex<Option<serde_json::Value>>,
}

impl WasmPluginSink {
    pub fn new(client: kube::Client, namespace: &str, name: &str, lease: Arc<LeaseGuard>) -> Self {
        let resource = kube::api::ApiResource {
            group: "extensions.istio.io".into(),
            version: "v1alpha1".into(),
            api_version: "extensions.istio.io/v1alpha1".into(),
            kind: "WasmPlugin".into(),
            plural: "wasmplugins".into(),
        };
        Self { api: Api::namespaced_with(client, namespace, &resource), name: name.into(), lease, last: Default::default() }
    }

    async fn write(&self, dp: &crate::data_plane::DataPlane) -> Result<()> {
        let config = serde_json::to_value(&dp.edge)?;
        let mut last = self.last.lock().await;
        if last.as_ref() == Some(&config) {
            return Ok(());
        }
        if !self.lease.may_write().await? {
            tracing::debug!(wasmplugin = %self.name, "not the lease holder; leaving the WasmPlugin to the leader");
            return Ok(());
        }
        // Never create it: a WasmPlugin without its url would be useless.
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("cannot read WasmPlugin {}; the agent needs get and patch on wasmplugins", self.name))?;
        if existing.is_none() {
            bail!("WasmPlugin {} does not exist: apply deploy/overlays/wasmplugin (or `install --wasmplugin`) first", self.name);
        }
        let patch = json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": self.name},
            "spec": {"pluginConfig": config},
        });
        self.api
            .patch(&self.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
            .await
            .with_context(|| format!("cannot write spec.pluginConfig of WasmPlugin {}; the agent needs patch on wasmplugins", self.name))?;
        tracing::info!(wasmplugin = %self.name, peers = dp.edge.peers.len(), "wrote the edge configuration into the WasmPlugin");
        *last = Some(config);
        Ok(())
    }
}

impl crate::sinks::DataPlaneSink for WasmPluginSink {
    fn apply<'a>(&'a self, dp: &'a crate::data_plane::DataPlane) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write(dp))
    }
}
