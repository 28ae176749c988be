//! The ADS server's state ([`XdsServer`]): one snapshot per node group,
//! every connected proxy's view ([`ProxyStatus`]), counters, and who may
//! join which group ([`AccessPolicy`]; refusals counted by
//! [`RefusalReason`]). How it is served (the TLS accept loop, the gRPC
//! services): `super::services`.

use super::snapshot::Snapshot;
use super::tls::XdsPeer;
use crate::reasons::{RefusalCount, RefusalReason};
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;
use tonic::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

/// A configuration the proxy rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub version: String,
    pub message: String,
    pub at: SystemTime,
}

/// What one proxy has of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStatus {
    pub acked_version: Option<String>,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub last_nack: Option<Nack>,
}

/// The admin view of one connected proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the HTTP port's `/xds` shows (and `status` reads back): every
/// connected proxy and the NACKs received since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdsView {
    pub proxies: Vec<ProxyStatus>,
    pub nacks: u64,
}

pub type Classify = Arc<dyn Fn(&Node) -> String + Send + Sync>;

/// A group's snapshots as one stream watches them.
pub(super) type Snapshots = watch::Receiver<Option<Arc<Snapshot>>>;

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

/// Totals of what the server sent, per protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SentTotals {
    pub sotw_bytes: u64,
    pub sotw_resources: u64,
    pub delta_bytes: u64,
    pub delta_resources: u64,
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
        let mut groups = self.inner.groups.lock();
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
        self.inner.groups.lock().get(group).and_then(|tx| tx.borrow().clone())
    }

    pub(super) fn count_refusal(&self, reason: RefusalReason) {
        *self.inner.refusals.lock().entry(reason).or_default() += 1;
    }

    /// Clients refused since start, by reason (every reason, zeros included).
    pub fn refusals(&self) -> Vec<RefusalCount> {
        let counts = self.inner.refusals.lock();
        RefusalReason::ALL.iter().map(|r| RefusalCount { reason: *r, count: counts.get(r).copied().unwrap_or(0) }).collect()
    }

    /// The admin view: every proxy and the NACK count.
    pub fn view(&self) -> XdsView {
        XdsView { proxies: self.proxies(), nacks: self.nack_count() }
    }

    /// Every connected proxy, in connection order.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.inner.proxies.lock().values().cloned().collect()
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
    pub(super) fn connect(&self, node: &Node, protocol: Protocol, peer: Option<&XdsPeer>) -> Result<(Connection, Snapshots), Status> {
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
        self.inner.proxies.lock().insert(id, status);
        let snapshots = {
            let mut groups = self.inner.groups.lock();
            groups.entry(group.clone()).or_insert_with(|| watch::channel(None).0).subscribe()
        };
        tracing::info!(node = %node.id, group, ?protocol, identity = identity.as_deref().unwrap_or("-"), "xDS proxy connected");
        Ok((Connection { server: self.clone(), id, node_id: node.id.clone() }, snapshots))
    }
}

/// One proxy's stream, as the protocol handlers see the server.
pub(super) struct Connection {
    server: XdsServer,
    id: u64,
    pub(super) node_id: String,
}

impl Connection {
    pub(super) fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = self.server.inner.proxies.lock().get_mut(&self.id) {
            f(p.types.entry(type_url.to_string()).or_default());
        }
    }

    /// Counts a response about to be sent.
    pub(super) fn count(&self, protocol: Protocol, bytes: usize, resources: usize) {
        let i = usize::from(protocol == Protocol::Delta);
        if let (Some(b), Some(r)) = (self.server.inner.sent_bytes.get(i), self.server.inner.sent_resources.get(i)) {
            b.fetch_add(bytes as u64, Ordering::Relaxed);
            r.fetch_add(resources as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn sent(&self, type_url: &str, version: &str, nonce: &str) {
        self.update(type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.sent_nonce = Some(nonce.to_string());
        });
    }

    pub(super) fn acked(&self, type_url: &str, version: &str) {
        self.update(type_url, |t| t.acked_version = Some(version.to_string()));
    }

    pub(super) fn nacked(&self, type_url: &str, version: &str, message: &str) {
        tracing::warn!(node = %self.node_id, type_url, version, error = message, "proxy rejected xDS update (NACK)");
        self.server.inner.nacks.fetch_add(1, Ordering::Relaxed);
        self.update(type_url, |t| {
            t.last_nack = Some(Nack { version: version.to_string(), message: message.to_string(), at: SystemTime::now() })
        });
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.server.inner.proxies.lock().remove(&self.id);
        tracing::info!(node = %self.node_id, "xDS proxy disconnected");
    }
}
