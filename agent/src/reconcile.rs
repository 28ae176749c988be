//! The reconciler: one loop that owns every peer's state.
//!
//! For each `IstioMulticloud` object it fetches the remote's public document,
//! pins the remote's UUID, then fetches the private document with a token
//! minted for that remote. Results come back to the loop, which updates the
//! object's conditions and last-good cache, publishes the status, and
//! re-renders the edge filter's configuration (this cluster's documents plus
//! every peer whose public document it holds). A failing remote keeps its
//! last good metadata: its peer entry stays in the filter, its conditions
//! say why it is stale. Failures back off with jitter; healthy peers refresh
//! steadily.

use crate::cluster_uuid::ClusterUuid;
use crate::crd::{condition, CachedPrivate, CachedPublic, IstioMulticloudSpec, IstioMulticloudStatus};
use crate::data_plane::{DataPlane, EstablishedPeer};
use crate::exchange::factory::{ClientFactory, MetadataClient};
use crate::exchange::FetchError;
use crate::keys;
use crate::metrics::Metrics;
use crate::reasons::{Document, FetchResult, Reason};
use crate::sinks::{DataPlaneSink, StatusSink};
use crate::sources::Desired;
use multicloud_core::edge::{Edge, EdgeConfig, PeerKey, SpiffeSettings};
use multicloud_core::metadata::PrivateMetadata;
use multicloud_core::token::Scope;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

struct Peer {
    spec: IstioMulticloudSpec,
    generation: Option<i64>,
    client: Result<Arc<dyn MetadataClient>, FetchError>,
    status: IstioMulticloudStatus,
    /// The remote's public document and key, last good.
    public: Option<KnownPublic>,
    failures: u32,
    next_due: Instant,
    in_flight: bool,
    /// Bumped on spec changes, so a late result of an old spec is dropped.
    epoch: u64,
}

struct Outcome {
    name: String,
    epoch: u64,
    public: Result<KnownPublic, FetchError>,
    private: Option<Result<PrivateMetadata, FetchError>>,
    at: SystemTime,
}

pub struct Reconciler {
    /// The federation keys in force; a change (a rotation step) re-renders
    /// the public document and signs the next fetches with the new key.
    pub keys: watch::Receiver<keys::KeyRing>,
    pub factory: ClientFactory,
    pub status: Arc<dyn StatusSink>,
    pub sinks: Vec<Arc<dyn DataPlaneSink>>,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    pub spiffe: SpiffeSettings,
    /// The API guard's settings (per-peer token lifetimes come from the objects).
    pub api: multicloud_core::edge::ApiSettings,
}

impl Reconciler {
    /// Runs until `desired` closes.
    pub async fn run(self, mut desired: watch::Receiver<Option<Desired>>) {
        let (tx, mut rx) = mpsc::channel::<Outcome>(64);
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        let mut facts = None;
        let mut last_dp: Option<DataPlane> = None;
        let mut changed = true;
        let mut keys = self.keys.clone();
        let mut keys_open = true;
        loop {
            if changed {
                if let Some(d) = desired.borrow_and_update().clone() {
                    self.apply_desired(&mut peers, &d);
                    facts = Some(d.facts);
                }
                changed = false;
            }
            if let Some(f) = &facts {
                self.render(f, &peers, &mut last_dp).await;
            }
            let now = Instant::now();
            for (name, p) in peers.iter_mut() {
                if let (false, true, Some(f)) = (p.in_flight, p.next_due <= now, &facts) {
                    p.in_flight = true;
                    self.spawn_fetch(name.clone(), p, &f.cluster_uuid, tx.clone());
                }
            }
            let next = peers.values().filter(|p| !p.in_flight).map(|p| p.next_due).min();
            tokio::select! {
                r = desired.changed() => {
                    if r.is_err() { return; }
                    changed = true;
                }
                r = keys.changed(), if keys_open => {
                    // A fixed ring (no rotation source) closes at once.
                    keys_open = r.is_ok();
                    keys.borrow_and_update();
                }
                Some(outcome) = rx.recv() => {
                    let name = outcome.name.clone();
                    if let Some(p) = peers.get_mut(&name) {
                        if p.epoch == outcome.epoch {
                            self.absorb(&name, p, outcome).await;
                        } else {
                            p.in_flight = false;
                        }
                    }
                }
                _ = sleep_until(next) => {}
            }
        }
    }

    fn apply_desired(&self, peers: &mut BTreeMap<String, Peer>, d: &Desired) {
        peers.retain(|name, _| {
            let keep = d.peers.contains_key(name);
            if !keep {
                tracing::info!(object = %name, "IstioMulticloud object removed: the peer leaves the edge configuration");
                self.metrics.forget(name);
            }
            keep
        });
        for (name, want) in &d.peers {
            match peers.get_mut(name) {
                Some(p) if p.spec == want.spec => p.generation = want.generation,
                Some(p) => {
                    tracing::info!(object = %name, "spec changed: fetching again");
                    p.spec = want.spec.clone();
                    p.generation = want.generation;
                    p.client = (self.factory)(&want.spec);
                    p.next_due = Instant::now();
                    p.failures = 0;
                    p.epoch += 1;
                    p.in_flight = false;
                }
                None => {
                    let (status, public) = seed(name, want);
                    tracing::info!(
                        object = %name,
                        endpoint = %want.spec.metadata_endpoint,
                        resumed = public.is_some(),
                        "new IstioMulticloud object"
                    );
                    peers.insert(
                        name.clone(),
                        Peer {
                            spec: want.spec.clone(),
                            generation: want.generation,
                            client: (self.factory)(&want.spec),
                            status,
                            public,
                            failures: 0,
                            next_due: Instant::now(),
                            in_flight: false,
                            epoch: 0,
                        },
                    );
                }
            }
        }
    }

    fn spawn_fetch(&self, name: String, p: &Peer, local_uuid: &str, tx: mpsc::Sender<Outcome>) {
        let client = p.client.clone();
        let epoch = p.epoch;
        let key = self.keys.borrow().current.clone();
        let local_uuid = local_uuid.to_string();
        let ttl = self.timing.token_ttl_secs;
        let pinned = p.status.remote_cluster_uuid.as_deref().and_then(|pin| ClusterUuid::parse(pin).ok());
        let known_uuid = p.public.as_ref().map(|k| k.uuid.clone());
        tokio::spawn(async move {
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Outcome { name, epoch, public: Err(e), private: None, at: SystemTime::now() }).await;
                    return;
                }
            };
            let public = client.fetch_public().await.map(KnownPublic::new);
            // The private document needs the remote's UUID: from this fetch if
            // it agrees with the pin, else from the last good copy.
            let remote_uuid = match (&public, pinned) {
                (Ok(p), Some(pin)) if p.uuid != pin => Some(pin),
                (Ok(p), _) => Some(p.uuid.clone()),
                (Err(_), _) => known_uuid,
            };
            let private = match remote_uuid {
                Some(remote) => {
                    let now = unix(SystemTime::now());
                    let token = keys::mint(&key, &local_uuid, remote.as_str(), Scope::PrivateMulticluster, now, ttl);
                    Some(client.fetch_private(&token).await)
                }
                None => None,
            };
            let _ = tx.send(Outcome { name, epoch, public, private, at: SystemTime::now() }).await;
        });
    }

    async fn absorb(&self, name: &str, p: &mut Peer, o: Outcome) {
        p.in_flight = false;
        let now = rfc3339(o.at);
        let gen = p.generation;
        let st = &mut p.status;
        st.observed_generation = gen;
        let mut cache = st.metadata_cache.take().unwrap_or_default();
        let mut public_ok = false;
        match o.public {
            Ok(known) => {
                let uuid = &known.uuid;
                match &st.remote_cluster_uuid {
                    Some(pin) if pin != uuid.as_str() => {
                        self.metrics.fetch(name, Document::Public, FetchResult::Failed(Reason::RemoteUuidChanged));
                        tracing::error!(object = %name, pinned = %pin, offered = %uuid, "remote cluster UUID changed: refused, keeping the last good metadata");
                        st.set_condition(
                            condition::PUBLIC,
                            Some(false),
                            Reason::RemoteUuidChanged,
                            format!("{} now reports cluster UUID {uuid}, but this object is pinned to {pin}; if the remote really was rebuilt, delete and recreate this IstioMulticloud object", p.spec.metadata_endpoint),
                            &now,
                            gen,
                        );
                    }
                    _ => {
                        self.metrics.fetch(name, Document::Public, FetchResult::Ok);
                        self.metrics.success(name, Document::Public, o.at);
                        st.remote_cluster_uuid = Some(uuid.to_string());
                        if let Some(was) = p.public.as_ref().map(|k| &k.valid.doc) {
                            let doc = &known.valid.doc;
                            if was.root_ca != doc.root_ca {
                                tracing::info!(object = %name, "the peer's root CA bundle changed; trusting it (from its verified metadata endpoint, UUID pin held)");
                            }
                            if (&was.authn_key_pub, &was.additional_authn_keys_pub) != (&doc.authn_key_pub, &doc.additional_authn_keys_pub)
                            {
                                tracing::info!(object = %name, additional = doc.additional_authn_keys_pub.len(), "the peer's federation keys changed (a key rotation)");
                            }
                        }
                        cache.public = Some(CachedPublic { document: known.valid.doc.clone(), fetched_at: now.clone() });
                        p.public = Some(known);
                        public_ok = true;
                        st.set_condition(
                            condition::PUBLIC,
                            Some(true),
                            Reason::Fetched,
                            format!("public metadata fetched from {}", p.spec.metadata_endpoint),
                            &now,
                            gen,
                        );
                    }
                }
            }
            Err(e) => {
                self.metrics.fetch(name, Document::Public, FetchResult::Failed(e.reason()));
                tracing::warn!(object = %name, reason = %e.reason(), "public metadata fetch failed: {e}");
                let stale =
                    cache.public.as_ref().map(|c| format!("; serving the last good copy fetched at {}", c.fetched_at)).unwrap_or_default();
                st.set_condition(condition::PUBLIC, Some(false), e.reason(), format!("{e}{stale}"), &now, gen);
            }
        }
        let mut private_ok = false;
        match o.private {
            Some(Ok(doc)) => {
                self.metrics.fetch(name, Document::Private, FetchResult::Ok);
                self.metrics.success(name, Document::Private, o.at);
                cache.private = Some(CachedPrivate { document: doc, fetched_at: now.clone() });
                private_ok = true;
                st.set_condition(
                    condition::PRIVATE,
                    Some(true),
                    Reason::Fetched,
                    "private metadata fetched with a federation token".into(),
                    &now,
                    gen,
                );
            }
            Some(Err(e)) => {
                self.metrics.fetch(name, Document::Private, FetchResult::Failed(e.reason()));
                tracing::warn!(object = %name, reason = %e.reason(), "private metadata fetch failed: {e}");
                let stale =
                    cache.private.as_ref().map(|c| format!("; serving the last good copy fetched at {}", c.fetched_at)).unwrap_or_default();
                st.set_condition(condition::PRIVATE, Some(false), e.reason(), format!("{e}{stale}"), &now, gen);
            }
            None => {
                st.set_condition(
                    condition::PRIVATE,
                    None,
                    Reason::WaitingForPublicMetadata,
                    "the private document needs the remote's public metadata first".into(),
                    &now,
                    gen,
                );
            }
        }
        st.metadata_cache = Some(cache);
        if public_ok && private_ok {
            st.set_condition(condition::READY, Some(true), Reason::Federated, "public and private metadata are current".into(), &now, gen);
            p.failures = 0;
            p.next_due = Instant::now() + jitter(self.timing.refresh, 0.1);
        } else {
            let failing = [condition::PUBLIC, condition::PRIVATE]
                .iter()
                .filter_map(|t| st.condition(t))
                .find(|c| c.status != "True")
                .and_then(|c| Some((Reason::parse(&c.reason)?, c.message.clone())))
                .unwrap_or_else(|| (Reason::Pending, "exchange in progress".into()));
            st.set_condition(condition::READY, Some(false), failing.0, failing.1, &now, gen);
            p.failures = p.failures.saturating_add(1);
            let mut delay = backoff(self.timing.backoff_base, self.timing.backoff_cap, p.failures);
            // The remote is up and knows the way, but not us yet: the join
            // finishes as soon as its side links, so keep asking often.
            if public_ok && st.condition(condition::PRIVATE).is_some_and(|c| c.reason == Reason::Unauthorized.as_str()) {
                delay = delay.min(jitter(self.timing.join_retry, 0.2));
            }
            p.next_due = Instant::now() + delay;
        }
        self.metrics.ready(name, public_ok && private_ok);
        if let Err(e) = self.status.publish(name, st).await {
            tracing::warn!(object = %name, "cannot publish status: {e:#}");
        }
    }

    async fn render(&self, facts: &crate::facts::LocalFacts, peers: &BTreeMap<String, Peer>, last: &mut Option<DataPlane>) {
        let mut established: Vec<EstablishedPeer> = peers
            .iter()
            .filter_map(|(name, p)| {
                let public = p.public.as_ref()?;
                let private = p.status.metadata_cache.as_ref().and_then(|c| c.private.as_ref()).map(|c| c.document.clone());
                Some(EstablishedPeer {
                    name: name.clone(),
                    cluster_uuid: public.uuid.clone(),
                    root_ca: public.valid.doc.root_ca.clone(),
                    private,
                    enable_ingress_gateway: p.spec.enable_ingress_gateway,
                    metadata_ca: p.spec.metadata.as_ref().and_then(|m| m.ca.clone()),
                })
            })
            .collect();
        // Two objects naming the same remote: the first (by name) wins.
        let mut seen = std::collections::HashSet::new();
        established.retain(|p| seen.insert(p.cluster_uuid.clone()));
        let mut peer_keys: Vec<PeerKey> = peers
            .values()
            .filter_map(|p| Some((p, p.public.as_ref()?)))
            .filter(|(_, k)| established.iter().any(|e| e.cluster_uuid == k.uuid))
            .map(|(p, k)| PeerKey {
                cluster_uuid: k.valid.doc.cluster_uuid.clone(),
                authn_key_pub: k.valid.doc.authn_key_pub.clone(),
                max_api_token_lifetime_seconds: p.spec.api_proxy.as_ref().and_then(|a| a.max_token_lifetime_seconds),
                additional_authn_keys_pub: k.valid.doc.additional_authn_keys_pub.clone(),
            })
            .collect();
        peer_keys.sort_by(|a, b| a.cluster_uuid.cmp(&b.cluster_uuid));
        peer_keys.dedup_by(|a, b| a.cluster_uuid.eq_ignore_ascii_case(&b.cluster_uuid));
        let edge = EdgeConfig {
            public: {
                let ring = self.keys.borrow();
                facts.public_document(ring.current_pem(), ring.additional_pems())
            },
            private: facts.private_document(),
            peers: peer_keys,
            spiffe: self.spiffe.clone(),
            max_token_lifetime_seconds: 600,
            public_max_age_seconds: 60,
            api: self.api.clone(),
            // The identity-enforcing mesh port: one filter chain per peer
            // whose private metadata is known (its root secret is pushed
            // then), every exported service allowed to each.
            mesh: multicloud_core::meshguard::MeshSettings {
                peers: established
                    .iter()
                    .filter(|p| p.private.is_some())
                    .map(|p| multicloud_core::meshguard::MeshPeer {
                        name: p.name.clone(),
                        cluster_uuid: p.cluster_uuid.to_string(),
                        sni: multicloud_proto::traffic::peer_sni(p.cluster_uuid.as_str()),
                        services: {
                            let mut hosts: Vec<String> = facts.services.iter().map(|s| s.hostname.to_ascii_lowercase()).collect();
                            hosts.sort();
                            hosts.dedup();
                            hosts
                        },
                    })
                    .collect(),
            },
        };
        let dp = DataPlane { edge, local: facts.clone(), peers: established };
        if last.as_ref() == Some(&dp) {
            return;
        }
        // Never hand the filter a configuration it would refuse.
        if let Err(e) = Edge::compile(dp.edge.clone()) {
            if last.as_ref().map(|l| &l.local) != Some(facts) {
                tracing::error!("local facts do not make a valid edge configuration, keeping the previous one: {e}");
                self.metrics.edge_render_error();
            }
            *last = Some(dp);
            return;
        }
        let mut ok = true;
        for sink in &self.sinks {
            if let Err(e) = sink.apply(&dp).await {
                tracing::error!("cannot apply the data plane configuration: {e:#}");
                ok = false;
            }
        }
        if ok {
            tracing::info!(peers = dp.peers.len(), "data plane configuration updated");
            *last = Some(dp);
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

mod seed;
mod timing;
use seed::{seed, KnownPublic};
use timing::jitter;
pub use timing::{backoff, backoff_at, rfc3339, Timing};

#[cfg(test)]
mod tests;
