//! The agent's Envoy ADS server: one snapshot of resources per node group
//! (e.g. "gateway", "sidecar"), served to every connected proxy of that group
//! over state-of-the-world ([`sotw`]) or delta ([`delta`]) ADS, with per-type
//! nonces, ACK/NACK tracking and an admin view of every proxy ([`ProxyStatus`]).
//!
//! Versions are content hashes, so two servers holding the same snapshot
//! agree on every version: a proxy that reconnects (to this process or a
//! restarted one) is not sent what it already has.
//!
//! Who may receive a group's snapshot: on the TLS port ([`XdsServer::serve_tls`])
//! every client proved a SPIFFE identity chained to this cluster's root;
//! [`AccessPolicy`] restricts some groups (the gateway's, which carries the
//! API proxy credential and the private document) to listed identities.

pub mod cache;
mod delta;
pub mod groups;
pub mod render;
mod sotw;
#[cfg(test)]
mod tests;
pub mod tls;

use crate::xds::tls::{RefusalReason, XdsPeer, XdsTls};
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// ADS, and the per-type services a proxy uses when a config source is not
/// ADS: an `EnvoyFilter`-added filter or cluster in an istiod-run proxy
/// points its ECDS/SDS/EDS/CDS `api_config_source` at the agent, and Envoy
/// then calls e.g. `ExtensionConfigDiscoveryService`. Every one of them is
/// the same stream handling (each request names its type).
macro_rules! router {
    ($server:expr) => {{
        use multicloud_proto::envoy_types::pb::envoy::service::{cluster, endpoint, extension, secret};
        tonic::transport::Server::builder()
            .add_service($server.service())
            .add_service(extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryServiceServer::new(
                $server.clone(),
            ))
            .add_service(secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new($server.clone()))
            .add_service(endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer::new($server.clone()))
            .add_service(cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer::new($server.clone()))
    }};
}

pub type TypeUrl = &'static str;

pub use multicloud_proto::type_url::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};

/// Push order: a type never references one pushed after it (clusters use
/// secrets and extension configs, endpoints belong to clusters, listeners
/// use clusters, routes belong to listeners).
pub const PUSH_ORDER: [TypeUrl; 6] = [SECRET, EXTENSION_CONFIG, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// How long a push waits for further `set` calls, so that a burst of
/// changes reaches each proxy as one update.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// One group's resources: type URL -> resource name -> (version, resource).
/// A resource's version is a hash of its encoded `Any`. Resources are
/// shared (`Arc`) between successive snapshots and the builder's cache, so an
/// unchanged resource costs its memory once however many snapshots hold it.
#[derive(Clone, Default, Debug)]
pub struct Snapshot {
    types: HashMap<String, BTreeMap<String, (String, Arc<Any>)>>,
}

/// Versions are content hashes, so comparing names and versions compares
/// contents without touching the resources' bytes.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.types.len() == other.types.len()
            && self.types.iter().all(|(t, m)| {
                other.types.get(t).is_some_and(|o| {
                    o.len() == m.len() && m.iter().zip(o.iter()).all(|((n1, (v1, _)), (n2, (v2, _)))| n1 == n2 && v1 == v2)
                })
            })
    }
}

/// The version of a resource: a hash of its type URL and encoded value.
pub fn resource_version(resource: &Any) -> String {
    hash_hex(&[resource.type_url.as_bytes(), &[0], &resource.value])
}

impl Snapshot {
    pub fn insert(&mut self, type_url: &str, name: &str, resource: Any) {
        let version = resource_version(&resource);
        self.types.entry(type_url.to_string()).or_default().insert(name.to_string(), (version, Arc::new(resource)));
    }

    /// Inserts a resource whose version is already known (see [`resource_version`]).
    pub fn insert_shared(&mut self, type_url: &str, name: &str, version: String, resource: Arc<Any>) {
        self.types.entry(type_url.to_string()).or_default().insert(name.to_string(), (version, resource));
    }

    pub fn remove(&mut self, type_url: &str, name: &str) {
        if let Some(t) = self.types.get_mut(type_url) {
            t.remove(name);
        }
    }

    /// The type's resources, by name: (version, resource).
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, (String, Arc<Any>)>> {
        self.types.get(type_url)
    }

    /// A hash over the type's resources (names and versions); the same for
    /// an absent type and a type with no resources.
    pub fn version(&self, type_url: &str) -> String {
        let all = self.types.get(type_url);
        version_of(all.into_iter().flat_map(|m| m.iter().map(|(n, (v, _))| (n.as_str(), v.as_str()))))
    }
}

/// A version over (name, version) pairs in name order.
fn version_of<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, version) in items {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(version.as_bytes());
        h.update([0]);
    }
    hex16(&h.finalize())
}

fn hash_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex16(&h.finalize())
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

/// A configuration the proxy rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nack {
    pub version: String,
    pub message: String,
    pub at: SystemTime,
}

/// What one proxy has of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    pub acked_version: Option<String>,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub last_nack: Option<Nack>,
}

/// The admin view of one connected proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub group: String,
    pub protocol: Protocol,
    pub connected_at: SystemTime,
    /// The SPIFFE ID its client certificate proved (none on a plaintext test server).
    pub identity: Option<String>,
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

pub type Classify = Arc<dyn Fn(&Node) -> String + Send + Sync>;

/// A group's snapshots as one stream watches them.
type Snapshots = watch::Receiver<Option<Arc<Snapshot>>>;

/// Which proven identities may receive which group's resources.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    /// Groups only these SPIFFE IDs may join (the gateway group: the
    /// `--xds-gateway-identity` list). A group not named here is open to
    /// every client the transport admitted (on the TLS port: any SPIFFE
    /// identity chained to this cluster's root).
    pub restricted: BTreeMap<String, BTreeSet<String>>,
}

/// The ADS server. Cheap to clone: every clone serves the same state.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    classify: Classify,
    access: AccessPolicy,
    /// Clients turned away, by reason.
    refusals: Mutex<BTreeMap<RefusalReason, u64>>,
    /// One channel per group; a proxy's stream watches its group's.
    groups: Mutex<HashMap<String, watch::Sender<Option<Arc<Snapshot>>>>>,
    /// Connected proxies by stream id.
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    next_stream: AtomicU64,
    nacks: AtomicU64,
    /// Bytes and resources sent, per protocol (index 0: SotW, 1: delta).
    sent_bytes: [AtomicU64; 2],
    sent_resources: [AtomicU64; 2],
}

/// How many xDS clients were turned away for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalCount {
    pub reason: RefusalReason,
    pub count: u64,
}

/// Totals of what the server sent, per protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SentTotals {
    pub sotw_bytes: u64,
    pub sotw_resources: u64,
    pub delta_bytes: u64,
    pub delta_resources: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; serve it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl XdsServer {
    /// `classify` maps a proxy's node (id, cluster, metadata) to its group;
    /// every group is open to every client (see [`XdsServer::with_access`]).
    pub fn new(classify: Classify) -> Self {
        Self::with_access(classify, AccessPolicy::default())
    }

    /// A server whose groups are restricted by `access`.
    pub fn with_access(classify: Classify, access: AccessPolicy) -> Self {
        XdsServer {
            inner: Arc::new(Inner {
                classify,
                access,
                refusals: Mutex::new(BTreeMap::new()),
                groups: Mutex::new(HashMap::new()),
                proxies: Mutex::new(BTreeMap::new()),
                next_stream: AtomicU64::new(1),
                nacks: AtomicU64::new(0),
                sent_bytes: [AtomicU64::new(0), AtomicU64::new(0)],
                sent_resources: [AtomicU64::new(0), AtomicU64::new(0)],
            }),
        }
    }

    /// Replaces a group's resources. Every connected proxy of the group gets
    /// the changes (after [`DEBOUNCE`], type by type in [`PUSH_ORDER`]).
    pub fn set(&self, group: &str, snapshot: Snapshot) {
        let mut groups = lock(&self.inner.groups);
        let tx = groups.entry(group.to_string()).or_insert_with(|| watch::channel(None).0);
        tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&snapshot) {
                return false;
            }
            *cur = Some(Arc::new(snapshot));
            true
        });
    }

    /// The group's current snapshot, if one was set.
    pub fn snapshot(&self, group: &str) -> Option<Arc<Snapshot>> {
        lock(&self.inner.groups).get(group).and_then(|tx| tx.borrow().clone())
    }

    pub fn service(&self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Serves without TLS: no client proves an identity, so restricted
    /// groups refuse everyone. In-process unit tests only; the agent serves
    /// TCP with [`XdsServer::serve_tls`].
    #[cfg(test)]
    pub async fn serve_plaintext(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        router!(self).serve_with_incoming(incoming).await?;
        Ok(())
    }

    /// Serves over mutual TLS: each accepted connection is handshaken in
    /// its own task (a slow client delays no one), and only connections
    /// whose client certificate chains to `tls`'s client roots reach gRPC,
    /// carrying the identity they proved. Failed handshakes are logged
    /// and counted.
    pub async fn serve_tls(self, listener: tokio::net::TcpListener, tls: Arc<XdsTls>) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<crate::xds::tls::TlsConn, std::io::Error>>(OUTBOUND_BUFFER);
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: give others time to close theirs.
                        tracing::warn!("xDS port: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (tls, tx, server) = (tls.clone(), tx.clone(), server.clone());
                tokio::spawn(async move {
                    match tls.accept(tcp, remote).await {
                        Ok(conn) => {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Err((reason, detail)) => {
                            tracing::warn!(%remote, reason = reason.label(), error = %detail, "xDS port refused a client at the TLS handshake: present a certificate chained to this cluster's Istio root");
                            server.count_refusal(reason);
                        }
                    }
                });
            }
        });
        router!(self).serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
        Ok(())
    }

    fn count_refusal(&self, reason: RefusalReason) {
        *lock(&self.inner.refusals).entry(reason).or_default() += 1;
    }

    /// Clients refused since start, by reason (every reason, zeros included).
    pub fn refusals(&self) -> Vec<RefusalCount> {
        let counts = lock(&self.inner.refusals);
        RefusalReason::ALL.iter().map(|r| RefusalCount { reason: *r, count: counts.get(r).copied().unwrap_or(0) }).collect()
    }

    /// Every connected proxy, in connection order.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        lock(&self.inner.proxies).values().cloned().collect()
    }

    /// NACKs received since start, over all proxies and types.
    /// What was sent so far (encoded response bytes and resources), per protocol.
    pub fn sent_totals(&self) -> SentTotals {
        let i = &self.inner;
        SentTotals {
            sotw_bytes: i.sent_bytes[0].load(Ordering::Relaxed),
            sotw_resources: i.sent_resources[0].load(Ordering::Relaxed),
            delta_bytes: i.sent_bytes[1].load(Ordering::Relaxed),
            delta_resources: i.sent_resources[1].load(Ordering::Relaxed),
        }
    }

    pub fn nack_count(&self) -> u64 {
        self.inner.nacks.load(Ordering::Relaxed)
    }

    /// Whether the client (`peer`: what its TLS handshake proved; `None`
    /// on a plaintext server) may receive `group`'s resources.
    fn admit(&self, node: &Node, group: &str, peer: Option<&XdsPeer>) -> Result<(), Status> {
        let identity = peer.and_then(|p| p.spiffe.as_deref());
        let remote = peer.map(|p| p.remote.to_string()).unwrap_or_default();
        if peer.is_some() && identity.is_none() {
            tracing::warn!(node = %node.id, group, %remote, reason = RefusalReason::NoSpiffeId.label(), "xDS port refused a proxy: its certificate names no SPIFFE identity");
            self.count_refusal(RefusalReason::NoSpiffeId);
            return Err(Status::permission_denied(format!(
                "xDS node {:?}: the client certificate chains to this cluster's root but carries no spiffe:// URI SAN; present the proxy's Istio workload certificate",
                node.id
            )));
        }
        let Some(allowed) = self.inner.access.restricted.get(group) else { return Ok(()) };
        if identity.is_some_and(|i| allowed.contains(i)) {
            return Ok(());
        }
        let proven = identity.unwrap_or("no identity (plaintext connection)");
        tracing::warn!(node = %node.id, group, identity = proven, %remote, reason = RefusalReason::GroupNotAllowed.label(), "xDS port refused a proxy: its node claims a group its certificate does not prove");
        self.count_refusal(RefusalReason::GroupNotAllowed);
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        Err(Status::permission_denied(format!(
            "xDS node {:?} claims group {group:?} (node metadata MULTICLOUD_ROLE, or an Istio router~ node id), but its client certificate proves {proven}, \
             which may not receive that group's resources (allowed: {}). Connect with the {group}'s own workload certificate, \
             or, if this proxy is a {group}, add its SPIFFE ID to the agent's --xds-{group}-identity",
            node.id,
            allowed.join(", ")
        )))
    }

    /// Registers a stream whose first request named `node`, once `peer` may
    /// receive its group's resources; the returned guard removes it from
    /// [`XdsServer::proxies`] when the stream ends.
    fn connect(&self, node: &Node, protocol: Protocol, peer: Option<&XdsPeer>) -> Result<(Connection, Snapshots), Status> {
        let group = (self.inner.classify)(node);
        self.admit(node, &group, peer)?;
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let identity = peer.and_then(|p| p.spiffe.clone());
        let status = ProxyStatus {
            node_id: node.id.clone(),
            group: group.clone(),
            protocol,
            connected_at: SystemTime::now(),
            identity: identity.clone(),
            types: BTreeMap::new(),
        };
        lock(&self.inner.proxies).insert(id, status);
        let snapshots = {
            let mut groups = lock(&self.inner.groups);
            groups.entry(group.clone()).or_insert_with(|| watch::channel(None).0).subscribe()
        };
        tracing::info!(node = %node.id, group, ?protocol, identity = identity.as_deref().unwrap_or("-"), "xDS proxy connected");
        Ok((Connection { server: self.clone(), id, node_id: node.id.clone() }, snapshots))
    }
}

/// One proxy's stream, as the protocol handlers see the server.
struct Connection {
    server: XdsServer,
    id: u64,
    node_id: String,
}

impl Connection {
    fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = lock(&self.server.inner.proxies).get_mut(&self.id) {
            f(p.types.entry(type_url.to_string()).or_default());
        }
    }

    /// Counts a response about to be sent.
    fn count(&self, protocol: Protocol, bytes: usize, resources: usize) {
        let i = usize::from(protocol == Protocol::Delta);
        if let (Some(b), Some(r)) = (self.server.inner.sent_bytes.get(i), self.server.inner.sent_resources.get(i)) {
            b.fetch_add(bytes as u64, Ordering::Relaxed);
            r.fetch_add(resources as u64, Ordering::Relaxed);
        }
    }

    fn sent(&self, type_url: &str, version: &str, nonce: &str) {
        self.update(type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.sent_nonce = Some(nonce.to_string());
        });
    }

    fn acked(&self, type_url: &str, version: &str) {
        self.update(type_url, |t| t.acked_version = Some(version.to_string()));
    }

    fn nacked(&self, type_url: &str, version: &str, message: &str) {
        tracing::warn!(node = %self.node_id, type_url, version, error = message, "proxy rejected xDS update (NACK)");
        self.server.inner.nacks.fetch_add(1, Ordering::Relaxed);
        self.update(type_url, |t| {
            t.last_nack = Some(Nack { version: version.to_string(), message: message.to_string(), at: SystemTime::now() })
        });
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        lock(&self.server.inner.proxies).remove(&self.id);
        tracing::info!(node = %self.node_id, "xDS proxy disconnected");
    }
}

/// Why a stream ends early; sent to the proxy as the stream's status.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("the first request on an ADS stream must carry the node (id, cluster, metadata)")]
    NoNode,
    #[error("request without type_url; ADS requests must name the resource type")]
    NoTypeUrl,
}

/// How a stream handler stops: the proxy went away, or the stream ends with a status.
enum End {
    Closed,
    Status(Status),
}

impl From<StreamError> for End {
    fn from(e: StreamError) -> End {
        End::Status(Status::invalid_argument(e.to_string()))
    }
}

impl From<Status> for End {
    fn from(s: Status) -> End {
        End::Status(s)
    }
}

/// What differs between the two protocols' streams: how a request is
/// handled and how a new snapshot is pushed. The connect, debounce and push
/// loop around them ([`serve_stream`]) is the same.
trait ProtocolStream: Sized {
    type Request: Send;
    type Response: Send;
    const PROTOCOL: Protocol;
    fn node(req: &Self::Request) -> Option<&Node>;
    fn new(conn: Connection, snapshot: Option<Arc<Snapshot>>) -> Self;
    fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>);
    async fn on_request(&mut self, req: Self::Request, tx: &tokio::sync::mpsc::Sender<Result<Self::Response, Status>>) -> Result<(), End>;
    /// Sends, type by type in push order, what the current snapshot changed.
    async fn push(&mut self, tx: &tokio::sync::mpsc::Sender<Result<Self::Response, Status>>) -> Result<(), End>;
}

/// One proxy's stream: the first request names the node; then requests are
/// handled as they come, and snapshot changes are pushed after [`DEBOUNCE`].
async fn serve_stream<S: ProtocolStream>(
    server: XdsServer,
    peer: Option<XdsPeer>,
    mut requests: tonic::Streaming<S::Request>,
    tx: &tokio::sync::mpsc::Sender<Result<S::Response, Status>>,
) -> Result<(), End>
where
    S::Request: multicloud_proto::prost::Message + Default + 'static,
{
    let Some(first) = requests.message().await? else { return Ok(()) };
    let node = S::node(&first).ok_or(StreamError::NoNode)?;
    let (conn, mut snapshots) = server.connect(node, S::PROTOCOL, peer.as_ref())?;
    let snapshot = snapshots.borrow_and_update().clone();
    let mut s = S::new(conn, snapshot);
    s.on_request(first, tx).await?;
    let mut push_at = None;
    loop {
        tokio::select! {
            req = requests.message() => match req? {
                Some(req) => s.on_request(req, tx).await?,
                None => return Ok(()),
            },
            changed = snapshots.changed(), if push_at.is_none() => {
                if changed.is_err() {
                    return Ok(());
                }
                push_at = Some(tokio::time::Instant::now() + DEBOUNCE);
            },
            () = tokio::time::sleep_until(push_deadline(push_at)), if push_at.is_some() => {
                push_at = None;
                s.set_snapshot(snapshots.borrow_and_update().clone());
                s.push(tx).await?;
            },
        }
    }
}

/// Sends one response; `End::Closed` once the proxy stopped reading.
async fn send<T>(tx: &tokio::sync::mpsc::Sender<Result<T, Status>>, item: T) -> Result<(), End> {
    tx.send(Ok(item)).await.map_err(|_| End::Closed)
}

/// Ends the stream with the handler's status, if it has one.
async fn finish<T>(tx: &tokio::sync::mpsc::Sender<Result<T, Status>>, result: Result<(), End>) {
    if let Err(End::Status(status)) = result {
        tracing::debug!(%status, "ending xDS stream");
        let _ = tx.send(Err(status)).await;
    }
}

/// When the next debounced push is due, if one is.
fn push_deadline(push_at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    push_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))
}

/// Per-stream nonces: unique within the stream, which is all ADS needs.
#[derive(Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Room for a few responses; a proxy that does not read stalls only its own stream.
const OUTBOUND_BUFFER: usize = 16;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_BUFFER);
        let peer = request.extensions().get::<XdsPeer>().cloned();
        tokio::spawn(sotw::run(self.clone(), peer, request.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_BUFFER);
        let peer = request.extensions().get::<XdsPeer>().cloned();
        tokio::spawn(delta::run(self.clone(), peer, request.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A per-type xDS service (`$stream`/`$delta` are its SotW and delta
/// methods) served by the same handling as ADS; its unary fetch is refused.
macro_rules! per_type_service {
    ($trait_:path, $stream:ident, $stream_ty:ident, $delta:ident, $delta_ty:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait_ for XdsServer {
            type $stream_ty = ResponseStream<DiscoveryResponse>;
            type $delta_ty = ResponseStream<DeltaDiscoveryResponse>;

            async fn $stream(&self, request: Request<Streaming<DiscoveryRequest>>) -> Result<Response<Self::$stream_ty>, Status> {
                self.stream_aggregated_resources(request).await
            }

            async fn $delta(&self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Result<Response<Self::$delta_ty>, Status> {
                self.delta_aggregated_resources(request).await
            }

            async fn $fetch(&self, _request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented("REST-style fetch is not served: use a gRPC stream"))
            }
        }
    };
}

per_type_service!(
    multicloud_proto::envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryService,
    stream_extension_configs,
    StreamExtensionConfigsStream,
    delta_extension_configs,
    DeltaExtensionConfigsStream,
    fetch_extension_configs
);
per_type_service!(
    multicloud_proto::envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService,
    stream_secrets,
    StreamSecretsStream,
    delta_secrets,
    DeltaSecretsStream,
    fetch_secrets
);
per_type_service!(
    multicloud_proto::envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService,
    stream_endpoints,
    StreamEndpointsStream,
    delta_endpoints,
    DeltaEndpointsStream,
    fetch_endpoints
);
per_type_service!(
    multicloud_proto::envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService,
    stream_clusters,
    StreamClustersStream,
    delta_clusters,
    DeltaClustersStream,
    fetch_clusters
);

/// Types in push order: [`PUSH_ORDER`] first, then any others by name.
fn push_order<'a>(types: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = types.cloned().collect();
    v.sort_by_key(|t| (PUSH_ORDER.iter().position(|p| p == t).unwrap_or(PUSH_ORDER.len()), t.clone()));
    v
}
