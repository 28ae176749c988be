//! The Kubernetes source (the Lease holder's): watches `IstioMulticloud`
//! objects and this cluster's facts (`crate::kube::facts_watch`; nothing is
//! polled), and feeds the reconciler with both.

use crate::crd::IstioMulticloud;
use crate::kube::KubeOptions;
use crate::sinks::status::KubeStatusSink;
use crate::sources::DesiredPeer;
use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt as _};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Watches every `IstioMulticloud` (cluster-scoped) and publishes the whole
/// map, name → spec and generation, whenever it changes. Returns when every
/// receiver is gone. Watch errors are logged and retried with backoff.
pub async fn watch_objects(
    client: kube::Client,
    tx: tokio::sync::watch::Sender<BTreeMap<String, DesiredPeer>>,
    status: Option<Arc<KubeStatusSink>>,
) {
    let api = Api::<IstioMulticloud>::all(client);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    // Objects listed since the last (re)start; swapped in at InitDone so a
    // relist never publishes a half-filled map.
    let mut relist: Option<BTreeMap<String, DesiredPeer>> = None;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            () = tx.closed() => return,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watching IstioMulticloud objects failed; retrying (check the agent's RBAC for istiomulticlouds)");
                continue;
            }
        };
        match event {
            watcher::Event::Init => relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(map), Some((name, peer))) = (relist.as_mut(), desired_peer(obj)) {
                    map.insert(name, peer);
                }
            }
            watcher::Event::InitDone => {
                if let Some(map) = relist.take() {
                    tx.send_if_modified(|cur| replace_if_changed(cur, map));
                }
            }
            watcher::Event::Apply(obj) => {
                if let (Some(sink), Some(name)) = (&status, obj.metadata.name.as_deref()) {
                    if let Err(e) = sink.correct_drift(name, obj.status.as_ref()).await {
                        tracing::warn!(object = name, "cannot correct the object's status: {e:#}");
                    }
                }
                if let Some((name, peer)) = desired_peer(obj) {
                    tx.send_if_modified(|cur| cur.insert(name, peer.clone()).as_ref() != Some(&peer));
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(name) = obj.metadata.name {
                    if let Some(sink) = &status {
                        sink.forget(&name);
                    }
                    tx.send_if_modified(|cur| cur.remove(&name).is_some());
                }
            }
        }
    }
}

fn replace_if_changed(cur: &mut BTreeMap<String, DesiredPeer>, new: BTreeMap<String, DesiredPeer>) -> bool {
    if *cur == new {
        return false;
    }
    *cur = new;
    true
}

pub(crate) fn desired_peer(obj: IstioMulticloud) -> Option<(String, DesiredPeer)> {
    let name = obj.metadata.name?;
    Some((name, DesiredPeer { spec: obj.spec, generation: obj.metadata.generation, status: obj.status }))
}

/// Feeds the reconciler in Kubernetes mode: the watched objects plus the
/// watched local facts. A facts change that cannot be worked out keeps the
/// last good facts (and is logged with what to fix); nothing is published
/// until the first facts are known.
pub async fn desired_state(
    client: kube::Client,
    opts: KubeOptions,
    tx: tokio::sync::watch::Sender<Option<crate::sources::Desired>>,
    status: Option<Arc<KubeStatusSink>>,
) {
    let (otx, mut orx) = tokio::sync::watch::channel(BTreeMap::new());
    let objects = tokio::spawn(watch_objects(client.clone(), otx, status));
    let (ftx, mut frx) = tokio::sync::watch::channel(None);
    let facts = tokio::spawn(crate::kube::facts_watch::watch_local_facts(client, opts, ftx));
    // Both watches end with this task (a holder that steps down drops it).
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }
    let _tasks = AbortOnDrop(vec![objects, facts]);
    loop {
        let f = frx.borrow_and_update().clone();
        if let Some(f) = f {
            let d = crate::sources::Desired { peers: orx.borrow().clone(), facts: f };
            tx.send_if_modified(|cur| {
                if cur.as_ref() == Some(&d) {
                    false
                } else {
                    *cur = Some(d);
                    true
                }
            });
        }
        tokio::select! {
            r = orx.changed() => if r.is_err() { return },
            r = frx.changed() => if r.is_err() { return },
            () = tx.closed() => return,
        }
    }
}
