//! The follower's source (Kubernetes mode): the data plane state the Lease
//! holder publishes (`crate::sinks::state`), watched and applied to this
//! replica's node-local sinks. See `crate::app` for the two roles.

use crate::data_plane::DataPlane;
use crate::sinks::state::{read_state, STATE_CONFIG_MAP};
use crate::sinks::DataPlaneSink;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use std::sync::Arc;

/// A follower: watches the state ConfigMap and applies every new state to
/// this replica's node-local `sinks`, in order, until the task is dropped.
/// A state that does not parse is logged and skipped (the last good one
/// keeps serving). `last` receives each applied state (a new holder starts
/// from it).
pub async fn follow(
    client: kube::Client,
    namespace: String,
    sinks: Vec<Arc<dyn DataPlaneSink>>,
    last: tokio::sync::watch::Sender<Option<DataPlane>>,
) {
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let what = format!("ConfigMap {namespace}/{STATE_CONFIG_MAP}");
    let stream = crate::kube::watch_named(api, STATE_CONFIG_MAP, what, "the last state keeps serving; grant list/watch on it");
    let mut stream = std::pin::pin!(stream);
    while let Some(cm) = stream.next().await {
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
