//! State-of-the-world ADS (`StreamAggregatedResources`): per type, every
//! response carries the whole subscribed set, a version and a nonce; the
//! proxy's next request with that nonce ACKs or NACKs it.

use super::server::{Connection, Protocol, XdsServer};
use super::snapshot::{push_order, version_of, Snapshot};
use super::stream::{finish, send, serve_stream, End, Nonces, ProtocolStream, StreamError};
use super::tls::XdsPeer;
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

pub(super) async fn run(server: XdsServer, peer: Option<XdsPeer>, requests: Streaming<DiscoveryRequest>, tx: Tx) {
    let result = serve_stream::<Stream>(server, peer, requests, &tx).await;
    finish(&tx, result).await;
}

/// One type's subscription on this stream.
struct TypeState {
    /// `None`: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    /// The last response sent: its nonce and version.
    nonce: Option<String>,
    version: Option<String>,
}

struct Stream {
    conn: Connection,
    snapshot: Option<Arc<Snapshot>>,
    types: HashMap<String, TypeState>,
    nonces: Nonces,
}

impl ProtocolStream for Stream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(conn: Connection, snapshot: Option<Arc<Snapshot>>) -> Self {
        Stream { conn, snapshot, types: HashMap::new(), nonces: Nonces::default() }
    }

    fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
        self.snapshot = snapshot;
    }

    async fn on_request(&mut self, req: DiscoveryRequest, tx: &Tx) -> Result<(), End> {
        Stream::on_request(self, req, tx).await
    }

    async fn push(&mut self, tx: &Tx) -> Result<(), End> {
        let s = self;
        for type_url in push_order(s.types.keys()) {
            s.respond(&type_url, false, tx).await?;
        }
        Ok(())
    }
}

/// `None` for a wildcard subscription: no names, or "*" among them.
fn subscription(names: &[String]) -> Option<BTreeSet<String>> {
    if names.is_empty() || names.iter().any(|n| n == "*") {
        None
    } else {
        Some(names.iter().cloned().collect())
    }
}

impl Stream {
    async fn on_request(&mut self, req: DiscoveryRequest, tx: &Tx) -> Result<(), End> {
        if req.type_url.is_empty() {
            return Err(StreamError::NoTypeUrl.into());
        }
        let names = subscription(&req.resource_names);
        let Some(t) = self.types.get_mut(&req.type_url) else {
            // A new subscription (a nonce from an earlier stream means nothing here).
            self.types.insert(req.type_url.clone(), TypeState { names, nonce: None, version: None });
            return self.respond(&req.type_url, true, tx).await;
        };
        if req.response_nonce != t.nonce.as_deref().unwrap_or("") {
            tracing::debug!(node = %self.conn.node_id, type_url = %req.type_url, nonce = %req.response_nonce, "ignoring request with a stale nonce");
            return Ok(());
        }
        if let Some(version) = t.version.as_deref().filter(|_| t.nonce.is_some()) {
            match &req.error_detail {
                Some(err) => self.conn.nacked(&req.type_url, version, &err.message),
                None => self.conn.acked(&req.type_url, &req.version_info),
            }
        }
        if t.names != names {
            t.names = names;
            return self.respond(&req.type_url, true, tx).await;
        }
        Ok(())
    }

    /// Sends the type's subscribed resources if the group has a snapshot and
    /// (unless `force`) they differ from the last response. A NACKed version
    /// is the last one sent, so it is not sent again until the snapshot changes.
    async fn respond(&mut self, type_url: &str, force: bool, tx: &Tx) -> Result<(), End> {
        let (Some(snapshot), Some(t)) = (&self.snapshot, self.types.get_mut(type_url)) else { return Ok(()) };
        let all = snapshot.resources(type_url);
        let chosen: Vec<_> =
            all.into_iter().flat_map(|m| m.iter()).filter(|(name, _)| t.names.as_ref().is_none_or(|n| n.contains(*name))).collect();
        let version = version_of(chosen.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())));
        if !force && t.version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let nonce = self.nonces.next();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: chosen.into_iter().map(|(_, (_, any))| Any::clone(any)).collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.conn.count(Protocol::Sotw, multicloud_proto::prost::Message::encoded_len(&response), response.resources.len());
        send(tx, response).await?;
        self.conn.sent(type_url, &version, &nonce);
        t.nonce = Some(nonce);
        t.version = Some(version);
        Ok(())
    }
}
