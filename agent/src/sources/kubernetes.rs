//! Kubernetes mode: watches `IstioMulticloud` objects and local facts with
//! `kube`, writes status with server-side apply while holding a Lease, and
//! keeps the federation key in a Secret.
//!
//! Every DaemonSet replica reads and watches; only the replica holding the
//! Lease writes shared state (object status), so replicas never fight over
//! the same field manager.

use crate::crd::{IstioMulticloud, IstioMulticloudStatus};
use crate::facts::LocalFacts;
use crate::sources::{BoxFuture, DesiredPeer, StatusSink};
use anyhow::{anyhow, bail, Context as _, Result};
use ed25519_dalek::SigningKey;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service, ServicePort as KubeServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use multicloud_core::metadata::{ExportedService, IngressGateway, ServicePort};
use multicloud_core::pem;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The field manager for everything the agent applies.
pub const FIELD_MANAGER: &str = "istio-multicloud-agent";
/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION_SECS: i32 = 15;
/// How often the holder renews (a third of the duration, as client-go does).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);
/// The Secret holding the federation private key.
pub const KEY_SECRET_NAME: &str = "istio-multicloud-federation-key";
/// The key inside that Secret (PKCS#8 PEM).
pub const KEY_SECRET_KEY: &str = "private.pem";
/// Istio's mesh mTLS port on the ingress gateway, when no port is named `tls`.
pub const MESH_TLS_PORT: i32 = 15443;

/// How the agent finds its own objects in the cluster.
#[derive(Debug, Clone, PartialEq)]
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

// ---------------------------------------------------------------------------
// Local facts
// ---------------------------------------------------------------------------

/// Reads what this cluster publishes about itself from the API server.
pub async fn read_local_facts(client: &kube::Client, opts: &KubeOptions) -> Result<LocalFacts> {
    let kube_system = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .context("cannot read Namespace kube-system (its UID is the cluster UUID); grant the agent `get` on namespaces")?;
    let cluster_uuid = kube_system
        .metadata
        .uid
        .ok_or_else(|| anyhow!("Namespace kube-system has no metadata.uid; the API server returned an incomplete object"))?;
    let network_name =
        if opts.network_name.is_empty() { default_network(client, opts, &cluster_uuid).await? } else { opts.network_name.clone() };
    let root_ca = read_root_ca(client, opts).await?;
    let ingress_gateways = if opts.advertise.is_empty() { read_gateways(client, opts).await? } else { opts.advertise.clone() };
    let services = read_exported_services(client, opts).await?;
    Ok(LocalFacts {
        cluster_uuid,
        root_ca,
        ingress_gateways,
        api_host: opts.api_host.clone(),
        network_name,
        services,
        mesh_mode: Default::default(),
        local_endpoints: vec![],
    })
}

/// Istio's label for the network a cluster's (or namespace's) workloads are on.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

/// This cluster's network when `--network-name` is not given: Istio's own
/// setting (the `topology.istio.io/network` label on the agent's namespace,
/// as Istio's multi-network install sets it on istio-system), else one
/// derived from the cluster UUID, so that two clusters never share a network
/// by accident (each sits behind its own gateway).
async fn default_network(client: &kube::Client, opts: &KubeOptions, cluster_uuid: &str) -> Result<String> {
    let ns = Api::<Namespace>::all(client.clone()).get(&opts.namespace).await.with_context(|| {
        format!("cannot read Namespace {} (for its {NETWORK_LABEL} label); grant the agent `get` on namespaces", opts.namespace)
    })?;
    let label = ns.metadata.labels.and_then(|mut l| l.remove(NETWORK_LABEL)).filter(|n| !n.is_empty());
    Ok(label.unwrap_or_else(|| format!("network-{cluster_uuid}")))
}

/// Istio publishes its root in every namespace's `istio-ca-root-cert`; a
/// plugged-in CA also keeps it in `istio-system/cacerts`.
async fn read_root_ca(client: &kube::Client, opts: &KubeOptions) -> Result<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &opts.namespace)
        .get_opt("istio-ca-root-cert")
        .await
        .with_context(|| format!("cannot read ConfigMap {}/istio-ca-root-cert; grant the agent `get` on configmaps", opts.namespace))?;
    if let Some(pem) = cm.and_then(|cm| cm.data).and_then(|mut d| d.remove("root-cert.pem")) {
        return Ok(pem);
    }
    let secret = Api::<Secret>::namespaced(client.clone(), "istio-system")
        .get_opt("cacerts")
        .await
        .context("cannot read Secret istio-system/cacerts; grant the agent `get` on that secret")?;
    let bytes = secret.and_then(|s| s.data).and_then(|mut d| d.remove("root-cert.pem"));
    match bytes {
        Some(ByteString(b)) => String::from_utf8(b).context("Secret istio-system/cacerts key root-cert.pem is not UTF-8 PEM"),
        None => bail!(
            "no Istio root CA: neither ConfigMap {}/istio-ca-root-cert nor Secret istio-system/cacerts has key root-cert.pem; \
             is Istio installed and has istiod started?",
            opts.namespace
        ),
    }
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

async fn read_gateways(client: &kube::Client, opts: &KubeOptions) -> Result<Vec<IngressGateway>> {
    let sel = selector(&opts.gateway_selector);
    let ns = &opts.namespace;
    let list = Api::<Service>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&sel))
        .await
        .with_context(|| format!("cannot list Services {sel} in {ns}; grant the agent `list` on services"))?;
    let mut services = list.items;
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let svc = services
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no ingress gateway Service labelled {sel} in namespace {ns}; install the Istio ingress gateway or advertise addresses explicitly"))?;
    let name = format!("{ns}/{}", svc.metadata.name.as_deref().unwrap_or_default());
    let spec = svc.spec.unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let port =
        ports.iter().find(|p| p.name.as_deref() == Some("tls")).or_else(|| ports.iter().find(|p| p.port == MESH_TLS_PORT)).ok_or_else(
            || anyhow!("gateway Service {name} has no port named tls and no port {MESH_TLS_PORT}; add the mesh TLS port to it"),
        )?;

    let lb: Vec<IngressGateway> = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .filter(|a| !a.is_empty())
        .map(|address| port_u16(port.port).map(|port| IngressGateway { address, port }))
        .collect::<Result<_>>()?;
    if !lb.is_empty() {
        return Ok(lb);
    }

    let node_port = port.node_port.ok_or_else(|| {
        anyhow!("gateway Service {name} has no load balancer address and no NodePort; wait for the load balancer, or advertise addresses explicitly")
    })?;
    let node_port = port_u16(node_port)?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("cannot list Nodes (for the gateway's NodePort addresses); grant the agent `list` on nodes")?;
    let mut out = Vec::new();
    for node in nodes.items {
        let addrs = node.status.and_then(|s| s.addresses).unwrap_or_default();
        let pick = addrs.iter().find(|a| a.type_ == "ExternalIP").or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"));
        if let Some(a) = pick {
            out.push(IngressGateway { address: a.address.clone(), port: node_port });
        }
    }
    if out.is_empty() {
        bail!("gateway Service {name} is a NodePort but no Node has an ExternalIP or InternalIP; advertise addresses explicitly");
    }
    Ok(out)
}

fn port_u16(p: i32) -> Result<u16> {
    u16::try_from(p).map_err(|_| anyhow!("port {p} is out of range"))
}

/// Istio's protocol selection: `appProtocol`, else the port name's prefix.
fn port_protocol(p: &KubeServicePort) -> Option<String> {
    if let Some(ap) = p.app_protocol.as_deref().filter(|s| !s.is_empty()) {
        return Some(ap.to_string());
    }
    const KNOWN: &[&str] = &["http", "http2", "https", "grpc", "grpc-web", "mongo", "mysql", "redis", "tcp", "tls", "udp"];
    let name = p.name.as_deref()?;
    let prefix = match name.split_once('-') {
        // `grpc-web-foo` is grpc-web; `grpc-foo` is grpc.
        Some(_) if name == "grpc-web" || name.starts_with("grpc-web-") => "grpc-web",
        Some((prefix, _)) => prefix,
        None => name,
    };
    KNOWN.contains(&prefix).then(|| prefix.to_string())
}

async fn read_exported_services(client: &kube::Client, opts: &KubeOptions) -> Result<Vec<ExportedService>> {
    let sel = format!("{}=true", opts.export_label);
    let list = Api::<Service>::all(client.clone()).list(&ListParams::default().labels(&sel)).await.with_context(|| {
        format!("cannot list Services labelled {sel} in all namespaces; grant the agent cluster-wide `list` on services")
    })?;
    let mut out = Vec::new();
    for svc in list.items {
        let (Some(name), Some(ns)) = (svc.metadata.name.clone(), svc.metadata.namespace.clone()) else { continue };
        let ports = svc
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .iter()
            .map(|p| {
                Ok(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: port_u16(p.port).with_context(|| format!("exported Service {ns}/{name}"))?,
                    protocol: port_protocol(p),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ready_endpoints = count_ready_endpoints(client, &ns, &name).await?;
        out.push(ExportedService { hostname: format!("{name}.{ns}.svc.cluster.local"), ports, ready_endpoints });
    }
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(out)
}

/// Ready endpoints over all of the Service's EndpointSlices. A dual-stack
/// Service has one slice per address family for the same pods, so endpoints
/// are counted once per target (pod), or per address when there is none.
async fn count_ready_endpoints(client: &kube::Client, ns: &str, name: &str) -> Result<u32> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .with_context(|| format!("cannot list EndpointSlices of Service {ns}/{name}; grant the agent `list` on endpointslices"))?;
    let mut seen = BTreeSet::new();
    for slice in slices.items {
        for ep in slice.endpoints {
            // A nil `ready` means unknown; Kubernetes says to treat it as ready.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let id = match &ep.target_ref {
                Some(t) => format!(
                    "{}/{}/{}",
                    t.kind.as_deref().unwrap_or_default(),
                    t.namespace.as_deref().unwrap_or_default(),
                    t.name.as_deref().unwrap_or_default()
                ),
                None => ep.addresses.first().cloned().unwrap_or_default(),
            };
            seen.insert(id);
        }
    }
    u32::try_from(seen.len()).context("too many endpoints")
}

// ---------------------------------------------------------------------------
// Desired state
// ---------------------------------------------------------------------------

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

fn desired_peer(obj: IstioMulticloud) -> Option<(String, DesiredPeer)> {
    let name = obj.metadata.name?;
    Some((name, DesiredPeer { spec: obj.spec, generation: obj.metadata.generation }))
}

// ---------------------------------------------------------------------------
// Leader lease
// ---------------------------------------------------------------------------

/// One replica's hold on the coordination.k8s.io Lease that elects the
/// writer of shared state. Updates use the Lease's resourceVersion, so two
/// replicas racing for it cannot both win.
pub struct LeaseGuard {
    api: Api<Lease>,
    name: String,
    holder: String,
    /// Until when this replica may act as leader: its last successful renewal
    /// plus the lease duration, less a margin for clock skew.
    held_until: Mutex<Option<Timestamp>>,
    /// Set by [`LeaseGuard::release`]: a replica that is shutting down
    /// neither renews nor competes any more.
    released: std::sync::atomic::AtomicBool,
}

/// Renewals are trusted for the lease duration less this margin.
const LEASE_SKEW_MARGIN: SignedDuration = SignedDuration::from_secs(5);

impl LeaseGuard {
    pub fn new(client: kube::Client, opts: &KubeOptions) -> Self {
        Self {
            api: Api::namespaced(client, &opts.namespace),
            name: opts.lease_name.clone(),
            holder: opts.holder_identity.clone(),
            held_until: Mutex::new(None),
            released: false.into(),
        }
    }

    /// Gives the Lease up, if this replica holds it, so another replica takes
    /// over at its next attempt instead of waiting for the Lease to expire
    /// (as client-go's ReleaseOnCancel does: empty holder, duration 1 s).
    /// From then on this replica never acquires it again.
    pub async fn release(&self) -> Result<()> {
        self.released.store(true, std::sync::atomic::Ordering::SeqCst);
        self.set_held(None);
        let ns = self.api.namespace().unwrap_or_default().to_string();
        let what = format!("Lease {ns}/{}", self.name);
        let Some(mut lease) = self.api.get_opt(&self.name).await.with_context(|| format!("cannot read {what}"))? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %what, holder = %self.holder, "released the Lease; another replica takes over");
                Ok(())
            }
            // Someone else changed it in between: it is not ours to release any more.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot release {what}")),
        }
    }

    /// Whether this replica holds the Lease, as of its last successful
    /// acquisition or renewal (no API call).
    pub fn is_leader(&self) -> bool {
        self.held_until.lock().map(|h| h.is_some_and(|t| t > Timestamp::now())).unwrap_or(false)
    }

    fn set_held(&self, held: Option<Timestamp>) {
        if let Ok(mut h) = self.held_until.lock() {
            *h = held;
        }
    }

    /// Creates the Lease if absent, renews it if this replica holds it, takes
    /// it over if its holder let it expire. `Ok(false)`: another replica holds it.
    pub async fn try_acquire(&self) -> Result<bool> {
        if self.released.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let now = Timestamp::now();
        let held = self.acquire_at(now).await;
        match &held {
            Ok(true) => self.set_held(Some(now + SignedDuration::from_secs(i64::from(LEASE_DURATION_SECS)) - LEASE_SKEW_MARGIN)),
            Ok(false) => self.set_held(None),
            Err(_) => {}
        }
        held
    }

    async fn acquire_at(&self, now: Timestamp) -> Result<bool> {
        let ns = self.api.namespace().unwrap_or_default().to_string();
        let what = format!("Lease {ns}/{}", self.name);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("cannot read {what}; grant the agent get/create/update on leases"))?;
        let Some(lease) = current else {
            let fresh = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECS),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => {
                    tracing::info!(lease = %what, holder = %self.holder, "created the Lease; this replica writes status");
                    Ok(true)
                }
                // Another replica created it first, or this one did: the
                // renewal task and a sink (WasmPluginSink) race at start.
                Err(e) if is_status(&e, 409) => self.held_by_us(&what).await,
                Err(e) => Err(e).with_context(|| format!("cannot create {what}")),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        if !ours && !lease_expired(&spec, now) {
            return Ok(false);
        }
        let mut next = lease;
        let s = next.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            s.holder_identity = Some(self.holder.clone());
            s.acquire_time = Some(MicroTime(now));
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        }
        s.lease_duration_seconds = Some(LEASE_DURATION_SECS);
        s.renew_time = Some(MicroTime(now));
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => {
                if !ours {
                    tracing::info!(lease = %what, holder = %self.holder, "took over the expired Lease; this replica writes status");
                }
                Ok(true)
            }
            // Someone else renewed or took it in between (or this replica's
            // other task renewed it).
            Err(e) if is_status(&e, 409) => self.held_by_us(&what).await,
            Err(e) => Err(e).with_context(|| format!("cannot update {what}")),
        }
    }

    /// After a conflict: whether the Lease, as it is now, names this replica.
    async fn held_by_us(&self, what: &str) -> Result<bool> {
        let lease = self.api.get_opt(&self.name).await.with_context(|| format!("cannot read {what}"))?;
        let holder = lease.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        Ok(holder.as_deref() == Some(self.holder.as_str()))
    }

    /// Renews (or competes for) the Lease every few seconds until dropped.
    pub fn spawn_renewal(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEW_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = self.try_acquire().await {
                    tracing::warn!(error = %format!("{e:#}"), "leader lease renewal failed");
                }
            }
        })
    }
}

/// Expired: no holder, or renewTime + leaseDurationSeconds is in the past.
fn lease_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let Some(MicroTime(renewed)) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return true };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECS)));
    *renewed + duration < now
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

/// Writes `IstioMulticloud` status with server-side apply, only from the
/// replica that holds the Lease.
///
/// It remembers what it last wrote per object. Another field manager that
/// rewrites the status (a person's `kubectl apply --subresource=status`, an
/// old replica) is corrected by [`KubeStatusSink::correct_drift`], which the
/// object watcher calls with every status it sees.
pub struct KubeStatusSink {
    api: Api<IstioMulticloud>,
    lease: Arc<LeaseGuard>,
    written: Mutex<BTreeMap<String, IstioMulticloudStatus>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl KubeStatusSink {
    pub fn new(client: kube::Client, lease: Arc<LeaseGuard>, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        Self { api: Api::all(client), lease, written: Mutex::default(), metrics }
    }

    /// Called with each object's status as the API server has it: if it is
    /// not what this replica last wrote (and this replica writes status),
    /// writes its own again. Returns whether it did.
    pub async fn correct_drift(&self, name: &str, seen: Option<&IstioMulticloudStatus>) -> Result<bool> {
        let ours = self.written.lock().ok().and_then(|w| w.get(name).cloned());
        let Some(ours) = ours else { return Ok(false) };
        if seen == Some(&ours) || !self.lease.is_leader() {
            return Ok(false);
        }
        tracing::warn!(object = name, "the object's status was changed by someone else; writing the agent's own again");
        self.write(name, &ours).await?;
        Ok(true)
    }

    /// Forgets a deleted object.
    pub fn forget(&self, name: &str) {
        if let Ok(mut w) = self.written.lock() {
            w.remove(name);
        }
    }

    async fn write(&self, name: &str, status: &IstioMulticloudStatus) -> Result<()> {
        if let Ok(mut w) = self.written.lock() {
            w.insert(name.to_string(), status.clone());
        }
        let leader = self.lease.is_leader() || self.lease.try_acquire().await?;
        if !leader {
            tracing::debug!(object = name, "not the lease holder; leaving status to the leader");
            return Ok(());
        }
        let patch = json!({
            "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
            "kind": "IstioMulticloud",
            "status": status,
        });
        self.api
            .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
            .await
            .with_context(|| format!("cannot write status of IstioMulticloud {name}; grant the agent patch on istiomulticlouds/status"))?;
        if let Some(m) = &self.metrics {
            m.status_write();
        }
        Ok(())
    }
}

impl StatusSink for KubeStatusSink {
    fn publish<'a>(&'a self, name: &'a str, status: &'a IstioMulticloudStatus) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write(name, status))
    }
}

// ---------------------------------------------------------------------------
// `check --kubernetes`
// ---------------------------------------------------------------------------

/// Why `check --kubernetes` could not read its inputs: reason, detail, what to do.
pub type CheckInputError = (String, String, String);

/// What `multicloud-agent check --kubernetes PEER` probes with, read the way
/// the agent reads them: the object's spec, this cluster's facts, and the
/// federation key from its Secret (never generated here).
pub async fn check_inputs(
    client: kube::Client,
    opts: &KubeOptions,
    peer: &str,
) -> std::result::Result<(LocalFacts, crate::crd::IstioMulticloudSpec, SigningKey), CheckInputError> {
    let err = |reason: &str, detail: String, hint: &str| (reason.to_string(), detail, hint.to_string());
    let api: Api<IstioMulticloud> = Api::all(client.clone());
    let object = api
        .get_opt(peer)
        .await
        .map_err(|e| {
            err("ApiError", format!("cannot read IstioMulticloud {peer}: {e}"), "check the kubeconfig and RBAC (get on istiomulticlouds)")
        })?
        .ok_or_else(|| err("NotFound", format!("no IstioMulticloud {peer:?}"), "check the name: kubectl get istiomulticlouds"))?;
    let facts = read_local_facts(&client, opts).await.map_err(|e| {
        err("FactsUnavailable", format!("{e:#}"), "the agent reads the same objects: see its log and the flags it runs with")
    })?;
    let key = SecretKeyStore::new(client, opts)
        .load()
        .await
        .map_err(|e| err("KeyInvalid", format!("{e:#}"), "see the message; the agent's Secret holds the federation key"))?
        .ok_or_else(|| {
            err(
                "KeyMissing",
                format!("no Secret {}/{KEY_SECRET_NAME}", opts.namespace),
                "the agent creates it on its first start: is the agent running in this namespace?",
            )
        })?;
    Ok((facts, object.spec, key))
}

// ---------------------------------------------------------------------------
// WasmPlugin configuration
// ---------------------------------------------------------------------------

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

    async fn write(&self, dp: &crate::reconcile::DataPlane) -> Result<()> {
        let config = serde_json::to_value(&dp.edge)?;
        let mut last = self.last.lock().await;
        if last.as_ref() == Some(&config) {
            return Ok(());
        }
        let leader = self.lease.is_leader() || self.lease.try_acquire().await?;
        if !leader {
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

impl crate::reconcile::DataPlaneSink for WasmPluginSink {
    fn apply<'a>(&'a self, dp: &'a crate::reconcile::DataPlane) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write(dp))
    }
}

// ---------------------------------------------------------------------------
// Federation key
// ---------------------------------------------------------------------------

/// The federation private key in Secret `istio-multicloud-federation-key`
/// (key `private.pem`). Neither the key nor the Secret is ever logged.
pub struct SecretKeyStore {
    api: Api<Secret>,
    namespace: String,
}

impl SecretKeyStore {
    pub fn new(client: kube::Client, opts: &KubeOptions) -> Self {
        Self { api: Api::namespaced(client, &opts.namespace), namespace: opts.namespace.clone() }
    }

    fn what(&self) -> String {
        format!("Secret {}/{KEY_SECRET_NAME}", self.namespace)
    }

    /// Loads the key, or generates one and creates the Secret. If another
    /// replica creates it first, loads theirs.
    pub async fn load_or_generate(&self) -> Result<SigningKey> {
        if let Some(key) = self.load().await? {
            return Ok(key);
        }
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEY_SECRET_NAME.into()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(KEY_SECRET_KEY.into(), ByteString(pem::ed25519_signing_key_to_pem(&key).into_bytes()))])),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %self.what(), "generated a new federation key");
                Ok(key)
            }
            Err(e) if is_status(&e, 409) => {
                self.load().await?.ok_or_else(|| anyhow!("{} vanished right after creation; retry", self.what()))
            }
            // The error is kube's, which never carries the request body.
            Err(e) => {
                Err(e).with_context(|| format!("cannot create {}; grant the agent create on secrets in {}", self.what(), self.namespace))
            }
        }
    }

    /// The key if the Secret exists (never generates one).
    pub async fn load(&self) -> Result<Option<SigningKey>> {
        let what = self.what();
        let Some(secret) =
            self.api.get_opt(KEY_SECRET_NAME).await.with_context(|| format!("cannot read {what}; grant the agent get on secrets"))?
        else {
            return Ok(None);
        };
        let Some(ByteString(bytes)) = secret.data.and_then(|mut d| d.remove(KEY_SECRET_KEY)) else {
            bail!("{what} has no key {KEY_SECRET_KEY}; delete the Secret to have the agent generate a new key (peers must then refetch its public key)");
        };
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{what} key {KEY_SECRET_KEY} is not UTF-8 PEM"))?;
        // The parse error names the PEM problem, never the key material.
        let key = pem::ed25519_signing_key_from_pem(&text)
            .map_err(|e| anyhow!("{what} key {KEY_SECRET_KEY} is not a PKCS#8 Ed25519 private key: {e}"))?;
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------
// Desired state for the reconciler
// ---------------------------------------------------------------------------

/// Feeds the reconciler in Kubernetes mode: the watched objects plus the
/// local facts, re-read every `facts_every`. A failing facts read keeps the
/// last good facts (and is logged with what to fix); nothing is published
/// until the first facts read succeeds.
pub async fn desired_state(
    client: kube::Client,
    opts: KubeOptions,
    facts_every: std::time::Duration,
    tx: tokio::sync::watch::Sender<Option<crate::sources::Desired>>,
    status: Option<Arc<KubeStatusSink>>,
) {
    let (otx, mut orx) = tokio::sync::watch::channel(BTreeMap::new());
    tokio::spawn(watch_objects(client.clone(), otx, status));
    let mut facts: Option<LocalFacts> = None;
    let mut tick = tokio::time::interval(facts_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match read_local_facts(&client, &opts).await {
                    Ok(f) => facts = Some(f),
                    Err(e) => tracing::error!("cannot read local facts, keeping the last good ones: {e:#}"),
                }
            }
            r = orx.changed() => if r.is_err() { return },
        }
        if let Some(f) = &facts {
            let d = crate::sources::Desired { peers: orx.borrow().clone(), facts: f.clone() };
            tx.send_if_modified(|cur| {
                if cur.as_ref() == Some(&d) {
                    false
                } else {
                    *cur = Some(d);
                    true
                }
            });
        }
        if tx.is_closed() {
            return;
        }
    }
}
