//! The data plane state the Lease holder publishes for the other replicas,
//! so that the DaemonSet costs the cluster the same whatever its node
//! count: only the holder watches the objects and facts, fetches from peers
//! and signs tokens; every other replica (a follower) watches this one
//! ConfigMap and the Lease, and serves its node's proxies from what the
//! holder published.
//!
//! The state is the [`DataPlane`] as JSON in ConfigMap
//! `istio-multicloud-state` (key [`STATE_KEY`]), written by server-side
//! apply under the agent's field manager. deploy/ creates the ConfigMap
//! empty, so the agent needs only get/list/watch/patch on that one name. It
//! holds what the filter serves and what the proxies get: this cluster's
//! documents and the peers' public and private documents and public keys;
//! no key, no token, no credential.

use crate::data_plane::DataPlane;
use crate::kube::lease::LeaseGuard;
use crate::kube::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::sinks::DataPlaneSink;
use crate::BoxFuture;
use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use std::sync::Arc;

/// The ConfigMap deploy/ creates for the state.
pub const STATE_CONFIG_MAP: &str = "istio-multicloud-state";
/// Its key holding the data plane (JSON).
pub const STATE_KEY: &str = "dataPlane.json";
/// The largest state written: a ConfigMap holds at most 1 MiB.
pub const MAX_STATE_BYTES: usize = 900 * 1024;

/// Writes each new data plane state into the state ConfigMap, while this
/// replica holds the Lease.
pub struct StatePublisher {
    api: Api<ConfigMap>,
    lease: Arc<LeaseGuard>,
    metrics: Arc<Metrics>,
}

impl StatePublisher {
    pub fn new(client: kube::Client, namespace: &str, lease: Arc<LeaseGuard>, metrics: Arc<Metrics>) -> Self {
        StatePublisher { api: Api::namespaced(client, namespace), lease, metrics }
    }
}

impl DataPlaneSink for StatePublisher {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if !self.lease.is_leader() {
                return Ok(());
            }
            let json = serde_json::to_string(dp)?;
            if json.len() > MAX_STATE_BYTES {
                bail!(
                    "the data plane state is {} bytes, more than the {MAX_STATE_BYTES} a ConfigMap can hold: the other replicas keep the last state; \
                     export fewer services or link fewer peers",
                    json.len()
                );
            }
            let patch = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": STATE_CONFIG_MAP},
                "data": {STATE_KEY: json},
            });
            self.api.patch(STATE_CONFIG_MAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.with_context(
                || format!("cannot write ConfigMap {}/{STATE_CONFIG_MAP} (deploy/ creates it; the agent needs patch on it)", self.api_ns()),
            )?;
            self.metrics.state_published();
            Ok(())
        })
    }
}

impl StatePublisher {
    fn api_ns(&self) -> String {
        self.api.namespace().unwrap_or_default().to_string()
    }
}

/// The data plane in a state ConfigMap, if it holds one that parses.
pub fn read_state(cm: &ConfigMap) -> Option<Result<DataPlane, serde_json::Error>> {
    let json = cm.data.as_ref()?.get(STATE_KEY)?;
    Some(serde_json::from_str(json))
}
