//! Kubernetes helpers shared by the Kubernetes source, the status and
//! WasmPlugin sinks and `check --kubernetes`: how the agent finds its own
//! objects ([`KubeOptions`]), this cluster's facts ([`facts`], read once by
//! `check`; [`facts_watch`], kept by watches for the holder), the Lease that
//! elects the writer of shared state ([`lease`]) and the federation key's
//! Secret ([`key_secret`]).
//!
//! Only the replica holding the Lease watches the objects and facts
//! ([`facts_watch`]) and writes shared state (object status, remote secrets,
//! the mesh config, the WasmPlugin, and the data plane state,
//! `crate::sinks::state`);
//! every other replica watches that state and the Lease (`crate::app`).

pub mod facts;
pub mod facts_watch;
pub mod key_secret;
pub mod lease;
#[cfg(test)]
mod tests;

use multicloud_core::metadata::IngressGateway;
use std::collections::BTreeMap;

/// The field manager for everything the agent applies.
pub const FIELD_MANAGER: &str = "istio-multicloud-agent";

/// How the agent finds its own objects in the cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeOptions {
    /// The agent's namespace (Lease, key Secret, gateway Service, root CA ConfigMap).
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    pub holder_identity: String,
    /// Labels of the ingress gateway Service.
    pub gateway_selector: BTreeMap<String, String>,
    /// Services labelled `<export_label>=true` are exported to peers.
    pub export_label: String,
    pub network_name: String,
    /// The API proxy's host[:port] as peers see it; empty if not offered.
    pub api_host: String,
    /// Gateway addresses to publish instead of the ones found on the Service.
    pub advertise: Vec<IngressGateway>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            namespace: "istio-system".into(),
            lease_name: "istio-multicloud-agent".into(),
            holder_identity: "multicloud-agent".into(),
            gateway_selector: BTreeMap::from([("istio".into(), "ingressgateway".into())]),
            export_label: "istio-multicloud.dev/export".into(),
            network_name: String::new(),
            api_host: String::new(),
            advertise: Vec::new(),
        }
    }
}

pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Object `name` of `api` each time it is applied (created or changed),
/// watched by name (`metadata.name` field selector: RBAC may name it) with
/// kube's backoff. A failing watch is logged once per run of failures as
/// "watching WHAT failed; retrying (HINT)".
pub fn watch_named<K>(api: kube::Api<K>, name: &str, what: String, hint: &'static str) -> impl futures::Stream<Item = K> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt as _;
    use kube::runtime::{watcher, WatchStreamExt as _};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut failing = false;
    watcher(api, config).default_backoff().applied_objects().filter_map(move |event| {
        let object = match event {
            Ok(o) => {
                failing = false;
                Some(o)
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "watching {what} failed; retrying ({hint})");
                }
                failing = true;
                None
            }
        };
        futures::future::ready(object)
    })
}
