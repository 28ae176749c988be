//! This cluster's facts, kept current by watches: what the Lease holder
//! publishes (`crate::sources::kubernetes`). Nothing is polled. The holder
//! watches, each narrowed to what it needs:
//! - the agent's Namespace (its network label), by name;
//! - ConfigMap `istio-ca-root-cert` in it, by name;
//! - the gateway Services (the gateway selector) in it;
//! - the exported Services (the export label), cluster-wide;
//! - the EndpointSlices of exactly those Services (a `kubernetes.io/service-name
//!   in (...)` selector, restarted when the exported set changes);
//! - Nodes only while the gateway is a NodePort without a load-balancer
//!   address, whose addresses then are the gateway's.
//!
//! kube-system's UID (the cluster UUID) is read once. A plugged-in CA's root
//! (`cacerts`) is read only when the ConfigMap has none. The facts are
//! recomputed from the watches' caches (no request) after each change,
//! coalesced over [`SETTLE`], and published only when they differ.

use super::facts::{
    exported_from, gateways_from, kube_facts, network_from, read_plugged_in_root, root_from_config_map, Gateways, SERVICE_NAME_LABEL,
};
use super::KubeOptions;
use crate::facts::LocalFacts;
use anyhow::{anyhow, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long changes are coalesced before the facts are recomputed.
pub const SETTLE: Duration = Duration::from_millis(100);

/// One watch and its cache; the watch runs until this is dropped.
struct Watched<K: kube::Resource + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: kube::Resource + 'static> Drop for Watched<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a watch of `api` narrowed by `config`, caching what it sees and
/// waking `changed` on every event. `what` names it in errors, with the RBAC
/// to grant.
fn watch<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>, what: String) -> Watched<K>
where
    K: kube::Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    let (store, writer) = reflector::store();
    let task = tokio::spawn(async move {
        let mut stream = reflector::reflector(writer, watcher(api, config)).default_backoff().boxed();
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    failing = false;
                    changed.notify_one();
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "watching {what} failed; retrying with backoff (the last good facts stay)");
                }
                Err(_) => {}
            }
        }
    });
    Watched { store, task }
}

fn by_name(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

/// The `kubernetes.io/service-name in (...)` selector for `names`.
fn slice_selector(names: &BTreeSet<String>) -> String {
    format!("{SERVICE_NAME_LABEL} in ({})", names.iter().cloned().collect::<Vec<_>>().join(","))
}

/// Keeps `tx` holding this cluster's facts until every receiver is gone.
pub async fn watch_local_facts(client: kube::Client, opts: KubeOptions, tx: watch::Sender<Option<LocalFacts>>) {
    let cluster_uuid = read_cluster_uuid(&client).await;
    let changed = Arc::new(Notify::new());
    let ns = opts.namespace.clone();
    let namespace = watch(
        Api::<Namespace>::all(client.clone()),
        by_name(&ns),
        changed.clone(),
        format!("Namespace {ns} (grant list/watch on namespaces)"),
    );
    let root = watch(
        Api::<ConfigMap>::namespaced(client.clone(), &ns),
        by_name("istio-ca-root-cert"),
        changed.clone(),
        format!("ConfigMap {ns}/istio-ca-root-cert (grant list/watch on it)"),
    );
    let gateway_selector = opts.gateway_selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let gateways = opts.advertise.is_empty().then(|| {
        watch(
            Api::<Service>::namespaced(client.clone(), &ns),
            watcher::Config::default().labels(&gateway_selector),
            changed.clone(),
            format!("the gateway Services {gateway_selector} in {ns} (grant list/watch on services)"),
        )
    });
    let export = format!("{}=true", opts.export_label);
    let exported = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(&export),
        changed.clone(),
        format!("the exported Services {export} (grant cluster-wide list/watch on services)"),
    );
    let mut slices: Option<(BTreeSet<String>, Watched<EndpointSlice>)> = None;
    let mut nodes: Option<Watched<Node>> = None;
    let mut last_error = String::new();
    for w in [
        namespace.store.wait_until_ready().await.err(),
        root.store.wait_until_ready().await.err(),
        exported.store.wait_until_ready().await.err(),
    ]
    .into_iter()
    .flatten()
    {
        tracing::error!("a facts watch stopped before its first list: {w}");
    }
    if let Some(g) = &gateways {
        let _ = g.store.wait_until_ready().await;
    }
    loop {
        // Exported Services' slices: a watch of exactly their names.
        let names: BTreeSet<String> = exported.store.state().iter().filter_map(|s| s.metadata.name.clone()).collect();
        if slices.as_ref().map(|(n, _)| n) != Some(&names) {
            slices = (!names.is_empty()).then(|| {
                let sel = slice_selector(&names);
                let w = watch(
                    Api::<EndpointSlice>::all(client.clone()),
                    watcher::Config::default().labels(&sel),
                    changed.clone(),
                    "the exported Services' EndpointSlices (grant cluster-wide list/watch on endpointslices)".into(),
                );
                (names.clone(), w)
            });
            if let Some((_, w)) = &slices {
                let _ = w.store.wait_until_ready().await;
            }
        }
        let computed = compute(
            &client,
            &opts,
            &cluster_uuid,
            &namespace,
            &root,
            gateways.as_ref(),
            &exported,
            slices.as_ref().map(|(_, w)| w),
            &nodes,
        )
        .await;
        let result = match computed {
            Ok(Computed::Facts(f)) => {
                // Nodes are watched only while the gateway needs them.
                if !matches!(f.1, NodesNeeded::Yes) {
                    nodes = None;
                }
                Ok(f.0)
            }
            Ok(Computed::NeedNodes) => {
                let w = watch(
                    Api::<Node>::all(client.clone()),
                    watcher::Config::default(),
                    changed.clone(),
                    "Nodes, for the gateway's NodePort addresses (grant list/watch on nodes)".into(),
                );
                let _ = w.store.wait_until_ready().await;
                nodes = Some(w);
                continue;
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(facts) => {
                last_error.clear();
                tx.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&facts) {
                        false
                    } else {
                        *cur = Some(facts);
                        true
                    }
                });
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_error {
                    tracing::error!("cannot work out this cluster's facts, keeping the last good ones: {msg}");
                    last_error = msg;
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tx.closed() => return,
        }
        tokio::time::sleep(SETTLE).await;
    }
}

enum NodesNeeded {
    Yes,
    No,
}

enum Computed {
    Facts((LocalFacts, NodesNeeded)),
    NeedNodes,
}

#[allow(clippy::too_many_arguments)]
async fn compute(
    client: &kube::Client,
    opts: &KubeOptions,
    cluster_uuid: &str,
    namespace: &Watched<Namespace>,
    root: &Watched<ConfigMap>,
    gateways: Option<&Watched<Service>>,
    exported: &Watched<Service>,
    slices: Option<&Watched<EndpointSlice>>,
    nodes: &Option<Watched<Node>>,
) -> Result<Computed> {
    let ns = namespace.store.state().first().cloned();
    let network_name = if opts.network_name.is_empty() { network_from(ns.as_deref(), cluster_uuid) } else { opts.network_name.clone() };
    let root_ca = match root_from_config_map(root.store.state().first().map(|c| c.as_ref())) {
        Some(pem) => pem,
        None => read_plugged_in_root(client, opts).await?,
    };
    let (ingress_gateways, nodes_needed) = match gateways {
        None => (opts.advertise.clone(), NodesNeeded::No),
        Some(g) => {
            let services: Vec<Service> = g.store.state().iter().map(|s| s.as_ref().clone()).collect();
            let node_list: Option<Vec<Node>> = nodes.as_ref().map(|n| n.store.state().iter().map(|n| n.as_ref().clone()).collect());
            match gateways_from(&services, node_list.as_deref(), opts)? {
                Gateways::Found(g) => (g, if node_list.is_some() { NodesNeeded::Yes } else { NodesNeeded::No }),
                Gateways::NeedNodes(_) if nodes.is_none() => return Ok(Computed::NeedNodes),
                Gateways::NeedNodes(p) => return Err(anyhow!("gateway NodePort {p}: the Nodes are not known yet")),
            }
        }
    };
    let services: Vec<Service> = exported.store.state().iter().map(|s| s.as_ref().clone()).collect();
    let slice_list: Vec<EndpointSlice> = slices.map(|w| w.store.state().iter().map(|s| s.as_ref().clone()).collect()).unwrap_or_default();
    let services = exported_from(&services, &slice_list)?;
    Ok(Computed::Facts((kube_facts(cluster_uuid.to_string(), root_ca, ingress_gateways, opts, network_name, services), nodes_needed)))
}

/// kube-system's UID, read once (retried with backoff until it is there).
async fn read_cluster_uuid(client: &kube::Client) -> String {
    let mut delay = Duration::from_millis(500);
    loop {
        match Api::<Namespace>::all(client.clone()).get("kube-system").await {
            Ok(ns) => match ns.metadata.uid {
                Some(uid) => return uid,
                None => tracing::error!("Namespace kube-system has no metadata.uid; the API server returned an incomplete object"),
            },
            Err(e) => {
                tracing::error!("cannot read Namespace kube-system (its UID is the cluster UUID); grant the agent `get` on namespaces: {e}")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_selector_names_exactly_the_exported_services() {
        let names: BTreeSet<String> = ["foo".to_string(), "bar".to_string()].into();
        assert_eq!(slice_selector(&names), "kubernetes.io/service-name in (bar,foo)");
    }
}
