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

use super::lease::LeaseGuard;
use super::FIELD_MANAGER;
use crate::data_plane::DataPlane;
use crate::metrics::Metrics;
use crate::sinks::DataPlaneSink;
use crate::BoxFuture;
use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt as _};
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
            self.api
                .patch(STATE_CONFIG_MAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                .await
                .with_context(|| {
                    format!("cannot write ConfigMap {}/{STATE_CONFIG_MAP} (deploy/ creates it; the agent needs patch on it)", self.api_ns())
                })?;
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

/// A follower: watches the state ConfigMap and applies every new state to
/// this replica's node-local `sinks`, in order, until the task is dropped.
/// A state that does not parse is logged and skipped (the last good one
/// keeps serving). `last` receives each applied state (a new holder starts
/// from it).
pub async fn follow(client: kube::Client, namespace: String, sinks: Vec<Arc<dyn DataPlaneSink>>, last: tokio::sync::watch::Sender<Option<DataPlane>>) {
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={STATE_CONFIG_MAP}"));
    let mut stream = watcher(api, config).default_backoff().applied_objects().boxed();
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let cm = match event {
            Ok(cm) => {
                failing = false;
                cm
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "watching ConfigMap {namespace}/{STATE_CONFIG_MAP} failed; retrying (the last state keeps serving; grant list/watch on it)");
                }
                failing = true;
                continue;
            }
        };
        let dp = match read_state(&cm) {
            None => continue, // not published yet
            Some(Err(e)) => {
                tracing::error!("ConfigMap {namespace}/{STATE_CONFIG_MAP} holds no valid state ({e}); keeping the last one");
                continue;
            }
            Some(Ok(dp)) => dp,
        };
        if last.borrow().as_ref() == Some(&dp) {
            continue;
        }
        let mut ok = true;
        for sink in &sinks {
            if let Err(e) = sink.apply(&dp).await {
                tracing::error!("cannot apply the published data plane state: {e:#}");
                ok = false;
            }
        }
        if ok {
            tracing::info!(peers = dp.peers.len(), "data plane state from the Lease holder applied");
        }
        last.send_replace(Some(dp));
    }
}
