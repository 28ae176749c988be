//! State-of-the-world ADS (`StreamAggregatedResources`): per type, a
//! response carries a version and a nonce; the proxy's next request with
//! that nonce ACKs or NACKs it. Listeners, clusters and every other type
//! carry the whole subscribed set in every response. Endpoints
//! (`ClusterLoadAssignment`) carry only what changed since the last
//! response on the stream, as the xDS protocol allows for every type but
//! listeners and clusters: a proxy keeps the assignments a response leaves
//! out. One endpoint change among 10,000 clusters is then one resource,
//! not 10,000 (BENCHMARKS.md, "xDS").

use super::server::{Protocol, XdsServer};
use super::snapshot::version_of;
use super::stream::{finish, send, serve_stream, End, ProtocolStream, Stream, StreamError};
use super::tls::XdsPeer;
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use multicloud_proto::type_url::ENDPOINT;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

pub(super) async fn run(server: XdsServer, peer: Option<XdsPeer>, requests: Streaming<DiscoveryRequest>, tx: Tx) {
    let result = serve_stream::<Sotw>(server, peer, requests, &tx).await;
    finish(&tx, result).await;
}

/// One type's subscription on this stream.
pub(super) struct TypeState {
    /// `None`: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    /// The last response sent: its nonce and version.
    nonce: Option<String>,
    version: Option<String>,
    /// Endpoints only: each resource's version as this stream last sent it.
    sent: BTreeMap<String, String>,
}

/// State-of-the-world ADS as a [`ProtocolStream`].
pub(super) struct Sotw;

impl ProtocolStream for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type TypeState = TypeState;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    async fn on_request(s: &mut Stream<TypeState>, req: DiscoveryRequest, tx: &Tx) -> Result<(), End> {
        if req.type_url.is_empty() {
            return Err(StreamError::NoTypeUrl.into());
        }
        let names = subscription(&req.resource_names);
        let Some(t) = s.types.get_mut(&req.type_url) else {
            // A new subscription (a nonce from an earlier stream means nothing here).
            s.types.insert(req.type_url.clone(), TypeState { names, nonce: None, version: None, sent: BTreeMap::new() });
            return s.respond(&req.type_url, true, tx).await;
        };
        if req.response_nonce != t.nonce.as_deref().unwrap_or("") {
            tracing::debug!(node = %s.conn.node_id, type_url = %req.type_url, nonce = %req.response_nonce, "ignoring request with a stale nonce");
            return Ok(());
        }
        if let Some(version) = t.version.as_deref().filter(|_| t.nonce.is_some()) {
            match &req.error_detail {
                Some(err) => s.conn.nacked(&req.type_url, version, &err.message),
                None => s.conn.acked(&req.type_url, &req.version_info),
            }
        }
        if req.error_detail.is_some() {
            // The proxy kept none of the NACKed response: the next one
            // carries every endpoint assignment again.
            t.sent.clear();
        }
        if t.names != names {
            t.names = names;
            return s.respond(&req.type_url, true, tx).await;
        }
        Ok(())
    }

    async fn push(s: &mut Stream<TypeState>, type_url: &str, tx: &Tx) -> Result<(), End> {
        s.respond(type_url, false, tx).await
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

impl Stream<TypeState> {
    /// Sends the type's subscribed resources if the group has a snapshot and
    /// (unless `force`) they differ from the last response. A NACKed version
    /// is the last one sent, so it is not sent again until the snapshot changes.
    /// The version names the whole subscribed set, also when (endpoints, not
    /// `force`) only the resources that changed are sent.
    async fn respond(&mut self, type_url: &str, force: bool, tx: &Tx) -> Result<(), End> {
        let (Some(snapshot), Some(t)) = (&self.snapshot, self.types.get_mut(type_url)) else { return Ok(()) };
        let all = snapshot.resources(type_url);
        let chosen: Vec<_> =
            all.into_iter().flat_map(|m| m.iter()).filter(|(name, _)| t.names.as_ref().is_none_or(|n| n.contains(*name))).collect();
        let version = version_of(chosen.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())));
        if !force && t.version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let changed_only = type_url == ENDPOINT && !force;
        let resources: Vec<Any> = chosen
            .iter()
            .filter(|(name, (v, _))| !changed_only || t.sent.get(name.as_str()) != Some(v))
            .map(|(_, (_, any))| Any::clone(any))
            .collect();
        if type_url == ENDPOINT {
            t.sent = chosen.iter().map(|(n, (v, _))| ((*n).clone(), v.clone())).collect();
        }
        let nonce = self.nonces.next();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
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
