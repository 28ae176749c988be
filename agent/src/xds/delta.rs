//! Delta ADS (`DeltaAggregatedResources`): per type, the proxy subscribes
//! and unsubscribes resource names (or the wildcard); responses carry only
//! resources whose version changed, plus the names removed.
//!
//! What the proxy has is tracked per stream (seeded from
//! `initial_resource_versions` on reconnect) and updated when a response is
//! sent, so a NACKed resource is not sent again until it changes.

use super::server::{Protocol, XdsServer};
use super::snapshot::version_of;
use super::stream::{finish, send, serve_stream, End, ProtocolStream, Stream, StreamError};
use super::tls::XdsPeer;
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeSet, HashMap};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

pub(super) async fn run(server: XdsServer, peer: Option<XdsPeer>, requests: Streaming<DeltaDiscoveryRequest>, tx: Tx) {
    let result = serve_stream::<Delta>(server, peer, requests, &tx).await;
    finish(&tx, result).await;
}

const WILDCARD: &str = "*";

/// One type's subscription on this stream.
pub(super) struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy has, as far as this stream knows: name -> version.
    known: HashMap<String, String>,
    /// The last response sent: its nonce and (system) version.
    nonce: Option<String>,
    version: Option<String>,
}

/// Delta ADS as a [`ProtocolStream`].
pub(super) struct Delta;

impl ProtocolStream for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type TypeState = TypeState;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    async fn on_request(s: &mut Stream<TypeState>, req: DeltaDiscoveryRequest, tx: &Tx) -> Result<(), End> {
        if req.type_url.is_empty() {
            return Err(StreamError::NoTypeUrl.into());
        }
        let Some(t) = s.types.get_mut(&req.type_url) else {
            // The first request of a type: empty subscribe means wildcard
            // (legacy), and the proxy says what it already has.
            let wildcard = req.resource_names_subscribe.is_empty() || req.resource_names_subscribe.iter().any(|n| n == WILDCARD);
            let names = req.resource_names_subscribe.iter().filter(|n| *n != WILDCARD).cloned().collect();
            let known = req.initial_resource_versions.clone();
            s.types.insert(req.type_url.clone(), TypeState { wildcard, names, known, nonce: None, version: None });
            return s.respond(&req.type_url, tx).await;
        };
        // ACK/NACK only for the last response; subscription changes count
        // whatever the nonce (Envoy sends them with the latest it has seen).
        if !req.response_nonce.is_empty() {
            match (t.nonce.as_deref(), t.version.as_deref()) {
                (Some(nonce), Some(version)) if nonce == req.response_nonce => match &req.error_detail {
                    Some(err) => s.conn.nacked(&req.type_url, version, &err.message),
                    None => s.conn.acked(&req.type_url, version),
                },
                _ => {
                    tracing::debug!(node = %s.conn.node_id, type_url = %req.type_url, nonce = %req.response_nonce, "stale nonce: not an ACK/NACK of the last response")
                }
            }
        }
        let mut changed = false;
        for name in req.resource_names_subscribe {
            changed = true;
            if name == WILDCARD {
                t.wildcard = true;
            } else {
                t.names.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            changed = true;
            if name == WILDCARD {
                t.wildcard = false;
            } else {
                t.names.remove(&name);
                // The proxy drops what it unsubscribed from.
                t.known.remove(&name);
            }
        }
        if changed {
            return s.respond(&req.type_url, tx).await;
        }
        Ok(())
    }

    async fn push(s: &mut Stream<TypeState>, type_url: &str, tx: &Tx) -> Result<(), End> {
        s.respond(type_url, tx).await
    }
}

impl Stream<TypeState> {
    /// Sends what changed for the type since the proxy's known state: new or
    /// changed resources and removed names. The first response of a type is
    /// sent even when empty, so the proxy can finish initializing.
    async fn respond(&mut self, type_url: &str, tx: &Tx) -> Result<(), End> {
        let (Some(snapshot), Some(t)) = (&self.snapshot, self.types.get_mut(type_url)) else { return Ok(()) };
        let wanted: Vec<_> = snapshot
            .resources(type_url)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(name, _)| t.wildcard || t.names.contains(*name))
            .collect();
        let version = version_of(wanted.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())));
        let resources: Vec<Resource> = wanted
            .iter()
            .filter(|(name, (v, _))| t.known.get(*name) != Some(v))
            .map(|(name, (v, any))| Resource {
                name: (*name).clone(),
                version: v.clone(),
                resource: Some(Any::clone(any)),
                ..Default::default()
            })
            .collect();
        // Linear, not known × wanted: at 10,000 resources the quadratic scan
        // cost most of a second per push.
        let wanted_names: std::collections::HashSet<&str> = wanted.iter().map(|(name, _)| name.as_str()).collect();
        let mut removed: Vec<String> = t.known.keys().filter(|k| !wanted_names.contains(k.as_str())).cloned().collect();
        removed.sort();
        if resources.is_empty() && removed.is_empty() && t.nonce.is_some() {
            return Ok(());
        }
        for r in &resources {
            t.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            t.known.remove(name);
        }
        let nonce = self.nonces.next();
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.conn.count(
            Protocol::Delta,
            multicloud_proto::prost::Message::encoded_len(&response),
            response.resources.len() + response.removed_resources.len(),
        );
        send(tx, response).await?;
        self.conn.sent(type_url, &version, &nonce);
        t.nonce = Some(nonce);
        t.version = Some(version);
        Ok(())
    }
}
