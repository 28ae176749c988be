//! In-process tests of the ADS server: a real tonic client over TCP on
//! 127.0.0.1:0, so the network boundary is exercised as Envoy would.

use super::*;
use crate::reasons::{RefusalCount, RefusalReason};
use multicloud_proto::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use multicloud_proto::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use multicloud_proto::envoy_types::pb::google::rpc::Status as RpcStatus;
use multicloud_proto::prost::Message as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(5);
/// How long "no response" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn cluster(name: &str, timeout_secs: i64) -> Any {
    let c = Cluster {
        name: name.into(),
        connect_timeout: Some(multicloud_proto::envoy_types::pb::google::protobuf::Duration { seconds: timeout_secs, nanos: 0 }),
        ..Default::default()
    };
    Any { type_url: CLUSTER.into(), value: c.encode_to_vec() }
}

fn cla(name: &str) -> Any {
    Any { type_url: ENDPOINT.into(), value: ClusterLoadAssignment { cluster_name: name.into(), ..Default::default() }.encode_to_vec() }
}

fn names(resources: &[Any]) -> Vec<String> {
    resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            CLUSTER => Cluster::decode(a.value.as_slice()).map(|c| c.name).unwrap_or_default(),
            _ => ClusterLoadAssignment::decode(a.value.as_slice()).map(|c| c.cluster_name).unwrap_or_default(),
        })
        .collect()
}

fn clusters(list: &[(&str, i64)]) -> Snapshot {
    let mut s = Snapshot::default();
    for (n, t) in list {
        s.insert(CLUSTER, n, cluster(n, *t));
    }
    s
}

/// Groups by the node id's prefix before '~' ("sidecar~1" -> "sidecar").
async fn start() -> (XdsServer, SocketAddr) {
    let server = XdsServer::new(Arc::new(|n: &Node| n.id.split('~').next().unwrap_or_default().to_string()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve_plaintext(listener));
    (server, addr)
}

fn node(id: &str) -> Option<Node> {
    Some(Node { id: id.into(), cluster: "test".into(), ..Default::default() })
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn type_status(server: &XdsServer, node_id: &str, type_url: &str) -> Option<TypeStatus> {
    server.proxies().into_iter().find(|p| p.node_id == node_id)?.types.get(type_url).cloned()
}

struct Client<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

impl<Req, Resp> Client<Req, Resp> {
    async fn send(&self, req: Req) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> Resp {
        tokio::time::timeout(WAIT, self.rx.message()).await.expect("a response in time").unwrap().expect("stream open")
    }

    async fn quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got one (ok: {})", r.is_ok());
        }
    }
}

async fn sotw(addr: SocketAddr) -> Client<DiscoveryRequest, DiscoveryResponse> {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    let rx = c.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    Client { tx, rx }
}

async fn delta(addr: SocketAddr) -> Client<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    let rx = c.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    Client { tx, rx }
}

fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack(r: DiscoveryRequest, message: &str) -> DiscoveryRequest {
    DiscoveryRequest { error_detail: Some(RpcStatus { code: 3, message: message.into(), details: vec![] }), ..r }
}

#[tokio::test]
async fn sotw_ack_nack_and_stale_nonce() {
    let (server, addr) = start().await;
    server.set("sidecar", clusters(&[("a", 1), ("b", 1)]));
    let mut c = sotw(addr).await;
    c.send(DiscoveryRequest { node: node("sidecar~1"), ..req(CLUSTER, &[], "", "") }).await;
    let r1 = c.recv().await;
    assert_eq!(names(&r1.resources), ["a", "b"]);
    assert_eq!(r1.version_info, server.snapshot("sidecar").unwrap().version(CLUSTER));
    assert!(!r1.nonce.is_empty());
    c.send(req(CLUSTER, &[], &r1.version_info, &r1.nonce)).await;
    let st = wait_for("ACK recorded", || type_status(&server, "sidecar~1", CLUSTER).filter(|t| t.acked_version.is_some())).await;
    assert_eq!(st.acked_version.as_deref(), Some(r1.version_info.as_str()));
    assert_eq!(st.sent_nonce.as_deref(), Some(r1.nonce.as_str()));
    let p = &server.proxies()[0];
    assert_eq!((p.group.as_str(), p.protocol), ("sidecar", Protocol::Sotw));

    // A change the proxy rejects: recorded, counted, not sent again.
    server.set("sidecar", clusters(&[("a", 2), ("b", 1)]));
    let r2 = c.recv().await;
    assert_ne!(r2.version_info, r1.version_info);
    assert_ne!(r2.nonce, r1.nonce);
    c.send(nack(req(CLUSTER, &[], &r1.version_info, &r2.nonce), "cluster a: bad timeout")).await;
    let st = wait_for("NACK recorded", || type_status(&server, "sidecar~1", CLUSTER).filter(|t| t.last_nack.is_some())).await;
    let n = st.last_nack.unwrap();
    assert_eq!((n.version.as_str(), n.message.as_str()), (r2.version_info.as_str(), "cluster a: bad timeout"));
    assert_eq!(st.acked_version.as_deref(), Some(r1.version_info.as_str()), "the last ACKed version stays");
    assert_eq!(server.nack_count(), 1);
    c.quiet().await;

    // A request with a stale nonce is neither an ACK nor a NACK.
    c.send(nack(req(CLUSTER, &["a"], &r1.version_info, &r1.nonce), "stale")).await;
    c.quiet().await;
    assert_eq!(server.nack_count(), 1);

    // The same snapshot again is no change; a new one is pushed.
    server.set("sidecar", clusters(&[("a", 2), ("b", 1)]));
    c.quiet().await;
    server.set("sidecar", clusters(&[("a", 3), ("b", 1)]));
    let r3 = c.recv().await;
    assert_eq!(names(&r3.resources), ["a", "b"]);
    assert_ne!(r3.version_info, r2.version_info);
}

/// The XDS column of `status`, from the HTTP port's real `/xds` answer.
fn ack_column(server: &XdsServer) -> String {
    let admin = crate::admin::AdminState {
        metrics: Arc::default(),
        board: Arc::new(crate::sinks::status::StatusBoard::new(None)),
        ready: Arc::default(),
        source_error: Arc::default(),
        xds: Some(server.clone()),
        config: None,
    };
    let (_, _, body) = crate::admin::route("GET", "/xds", &admin);
    crate::cli::status::ack_state(&serde_json::from_str(&body).unwrap())
}

/// `status`'s XDS column follows a real proxy's stream: none connected,
/// sent but not ACKed, ACKed, NACKed (with the proxy's message).
#[tokio::test]
async fn ack_state_reads_the_xds_view() {
    let (server, addr) = start().await;
    assert_eq!(ack_column(&server), "no proxies");
    server.set("sidecar", clusters(&[("a", 1)]));
    let mut c = sotw(addr).await;
    c.send(DiscoveryRequest { node: node("sidecar~1"), ..req(CLUSTER, &[], "", "") }).await;
    let r1 = c.recv().await;
    wait_for("the response recorded", || type_status(&server, "sidecar~1", CLUSTER).filter(|t| t.sent_version.is_some())).await;
    assert_eq!(ack_column(&server), "pending");
    c.send(req(CLUSTER, &[], &r1.version_info, &r1.nonce)).await;
    wait_for("ACK recorded", || type_status(&server, "sidecar~1", CLUSTER).filter(|t| t.acked_version.is_some())).await;
    assert_eq!(ack_column(&server), "all ACKed");
    server.set("sidecar", clusters(&[("a", 2)]));
    let r2 = c.recv().await;
    c.send(nack(req(CLUSTER, &[], &r1.version_info, &r2.nonce), "cluster a: bad timeout")).await;
    wait_for("NACK recorded", || type_status(&server, "sidecar~1", CLUSTER).filter(|t| t.last_nack.is_some())).await;
    assert_eq!(ack_column(&server), "NACK: cluster a: bad timeout");
}

/// A server whose "sidecar" group holds the endpoint assignments x, y and z.
async fn serving_three_assignments() -> (XdsServer, SocketAddr, Snapshot) {
    let (server, addr) = start().await;
    let mut snap = Snapshot::default();
    for n in ["x", "y", "z"] {
        snap.insert(ENDPOINT, n, cla(n));
    }
    server.set("sidecar", snap.clone());
    (server, addr, snap)
}

/// A changed endpoint assignment: the same cluster with a load-balancing policy.
fn cla_changed(name: &str) -> Any {
    let a = ClusterLoadAssignment { cluster_name: name.into(), policy: Some(Default::default()), ..Default::default() };
    Any { type_url: ENDPOINT.into(), value: a.encode_to_vec() }
}

/// A SotW stream subscribed to the endpoint assignments x, y and z: the
/// first response (every assignment, checked) ACKed, then y changed and
/// the response to that (y alone, checked) received but not yet answered.
async fn sotw_on_three_assignments(
    node_id: &str,
) -> (XdsServer, SocketAddr, Snapshot, Client<DiscoveryRequest, DiscoveryResponse>, DiscoveryResponse, DiscoveryResponse) {
    let (server, addr, mut snap) = serving_three_assignments().await;
    let mut c = sotw(addr).await;
    c.send(DiscoveryRequest { node: node(node_id), ..req(ENDPOINT, &["x", "y", "z"], "", "") }).await;
    let first = c.recv().await;
    assert_eq!(names(&first.resources), ["x", "y", "z"], "the first response: every subscribed assignment");
    c.send(req(ENDPOINT, &["x", "y", "z"], &first.version_info, &first.nonce)).await;
    snap.insert(ENDPOINT, "y", cla_changed("y"));
    server.set("sidecar", snap.clone());
    let changed = c.recv().await;
    assert_eq!(names(&changed.resources), ["y"], "one assignment changed: the response carries it alone");
    (server, addr, snap, c, first, changed)
}

#[tokio::test]
async fn sotw_endpoints_carry_only_what_changed_and_a_new_subscription_everything() {
    let (server, addr, snap, mut c, first, r) = sotw_on_three_assignments("sidecar~3").await;
    // The changed assignment went alone, under a new version.
    assert_ne!(r.version_info, first.version_info);
    assert_eq!(r.version_info, snap.version(ENDPOINT), "the version names the whole set");
    // Clusters are never cut down: the whole set each time.
    let mut clusters_snap = clusters(&[("a", 1), ("b", 1)]);
    for n in ["x", "y", "z"] {
        clusters_snap.insert(ENDPOINT, n, snap.resources(ENDPOINT).unwrap()[n].1.as_ref().clone());
    }
    c.send(req(ENDPOINT, &["x", "y", "z"], &r.version_info, &r.nonce)).await;
    server.set("sidecar", clusters_snap.clone());
    c.quiet().await; // the endpoints did not change: nothing is sent
    c.send(req(CLUSTER, &[], "", "")).await;
    let r = c.recv().await;
    assert_eq!((r.type_url.as_str(), names(&r.resources)), (CLUSTER, vec!["a".to_string(), "b".to_string()]));
    c.send(req(CLUSTER, &[], &r.version_info, &r.nonce)).await;
    clusters_snap.insert(CLUSTER, "b", cluster("b", 2));
    server.set("sidecar", clusters_snap.clone());
    let r = c.recv().await;
    assert_eq!(names(&r.resources), ["a", "b"], "a cluster change still sends every cluster");
    // A new stream (a reconnect) gets every assignment again.
    let mut again = sotw(addr).await;
    again.send(DiscoveryRequest { node: node("sidecar~4"), ..req(ENDPOINT, &["x", "y", "z"], "", "") }).await;
    assert_eq!(names(&again.recv().await.resources), ["x", "y", "z"]);
}

#[tokio::test]
async fn sotw_endpoints_after_a_nack_carry_every_assignment_again() {
    let (server, _addr, mut snap, mut c, first, r) = sotw_on_three_assignments("sidecar~5").await;
    // The proxy rejects it, so it holds none of that response: the next
    // change resends every assignment, not only the one that changed.
    c.send(nack(req(ENDPOINT, &["x", "y", "z"], &first.version_info, &r.nonce), "y: rejected")).await;
    snap.insert(ENDPOINT, "z", cla_changed("z"));
    server.set("sidecar", snap.clone());
    let r = c.recv().await;
    assert_eq!(names(&r.resources), ["x", "y", "z"], "after a NACK, every assignment");
}

#[tokio::test]
async fn sotw_explicit_subscription_and_groups() {
    let (server, addr, mut snap) = serving_three_assignments().await;
    let mut c = sotw(addr).await;
    c.send(DiscoveryRequest { node: node("sidecar~2"), ..req(ENDPOINT, &["x", "z", "missing"], "", "") }).await;
    let r = c.recv().await;
    assert_eq!(names(&r.resources), ["x", "z"]);
    // Changing the names (with the ACK) is answered with the new set.
    c.send(req(ENDPOINT, &["y"], &r.version_info, &r.nonce)).await;
    let r = c.recv().await;
    assert_eq!(names(&r.resources), ["y"]);
    // A change to a resource not subscribed is not pushed.
    c.send(req(ENDPOINT, &["y"], &r.version_info, &r.nonce)).await;
    snap.insert(ENDPOINT, "x", cla("x-changed"));
    server.set("sidecar", snap.clone());
    c.quiet().await;

    // Another group has no snapshot yet: nothing until one is set.
    let mut g = sotw(addr).await;
    g.send(DiscoveryRequest { node: node("gateway~1"), ..req(CLUSTER, &[], "", "") }).await;
    g.quiet().await;
    assert!(server.proxies().iter().any(|p| p.node_id == "gateway~1" && p.group == "gateway"));
    server.set("gateway", clusters(&[("gw", 1)]));
    assert_eq!(names(&g.recv().await.resources), ["gw"]);
}

#[tokio::test]
async fn bad_requests_end_their_stream_only() {
    let (server, addr) = start().await;
    server.set("sidecar", clusters(&[("a", 1)]));
    let mut c = sotw(addr).await;
    c.send(req(CLUSTER, &[], "", "")).await;
    let status = tokio::time::timeout(WAIT, c.rx.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status}");

    let mut d = delta(addr).await;
    d.send(DeltaDiscoveryRequest { node: node("sidecar~3"), ..Default::default() }).await;
    let status = tokio::time::timeout(WAIT, d.rx.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("type_url"), "{status}");

    let mut ok = sotw(addr).await;
    ok.send(DiscoveryRequest { node: node("sidecar~4"), ..req(CLUSTER, &[], "", "") }).await;
    assert_eq!(names(&ok.recv().await.resources), ["a"]);
}

fn dreq(type_url: &str, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn dnames(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn delta_initial_versions_removal_and_nack() {
    let (server, addr) = start().await;
    let snap = clusters(&[("a", 1), ("b", 1)]);
    let version_a = snap.resources(CLUSTER).unwrap()["a"].0.clone();
    server.set("sidecar", snap);
    let mut c = delta(addr).await;
    // Reconnecting with "a" current and "b" outdated: only "b" is sent.
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node("sidecar~5");
    first.initial_resource_versions = [("a".to_string(), version_a), ("b".to_string(), "old".to_string())].into();
    c.send(first).await;
    let r = c.recv().await;
    assert_eq!(dnames(&r), ["b"]);
    assert!(r.removed_resources.is_empty());
    assert_eq!(r.system_version_info, server.snapshot("sidecar").unwrap().version(CLUSTER));
    c.send(dreq(CLUSTER, &[], &[], &r.nonce)).await;
    let st = wait_for("delta ACK", || type_status(&server, "sidecar~5", CLUSTER).filter(|t| t.acked_version.is_some())).await;
    assert_eq!(st.acked_version, Some(r.system_version_info.clone()));
    assert_eq!(server.proxies()[0].protocol, Protocol::Delta);

    // Deleting "b" sends its removal, nothing else.
    server.set("sidecar", clusters(&[("a", 1)]));
    let r = c.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["b"]);
    c.send(dreq(CLUSTER, &[], &[], &r.nonce)).await;

    // A NACK is recorded; the rejected version is not sent again.
    server.set("sidecar", clusters(&[("a", 2)]));
    let r = c.recv().await;
    assert_eq!(dnames(&r), ["a"]);
    let mut n = dreq(CLUSTER, &[], &[], &r.nonce);
    n.error_detail = Some(RpcStatus { code: 3, message: "a: rejected".into(), details: vec![] });
    c.send(n).await;
    let st = wait_for("delta NACK", || type_status(&server, "sidecar~5", CLUSTER).filter(|t| t.last_nack.is_some())).await;
    assert_eq!(st.last_nack.unwrap().message, "a: rejected");
    assert_eq!(server.nack_count(), 1);
    c.quiet().await;
    // A NACK naming an older response's nonce is not counted.
    let mut stale = dreq(CLUSTER, &[], &[], "1");
    stale.error_detail = Some(RpcStatus { code: 3, message: "stale".into(), details: vec![] });
    c.send(stale).await;
    c.quiet().await;
    assert_eq!(server.nack_count(), 1);
}

#[tokio::test]
async fn delta_explicit_subscribe_and_unsubscribe() {
    let (server, addr) = start().await;
    let mut snap = Snapshot::default();
    for n in ["x", "y"] {
        snap.insert(ENDPOINT, n, cla(n));
    }
    server.set("sidecar", snap.clone());
    let mut c = delta(addr).await;
    let mut first = dreq(ENDPOINT, &["x", "y"], &[], "");
    first.node = node("sidecar~6");
    c.send(first).await;
    let r = c.recv().await;
    assert_eq!(dnames(&r), ["x", "y"]);

    // Unsubscribing needs no answer, and changes to "y" are no longer sent.
    c.send(dreq(ENDPOINT, &[], &["y"], &r.nonce)).await;
    c.quiet().await;
    snap.insert(ENDPOINT, "y", cla("y2"));
    server.set("sidecar", snap.clone());
    c.quiet().await;
    snap.insert(ENDPOINT, "x", cla("x2"));
    server.set("sidecar", snap.clone());
    let r = c.recv().await;
    assert_eq!(dnames(&r), ["x"]);
    assert!(r.removed_resources.is_empty());

    // Subscribing again sends the current "y".
    c.send(dreq(ENDPOINT, &["y"], &[], &r.nonce)).await;
    let r = c.recv().await;
    assert_eq!(dnames(&r), ["y"]);
    assert_eq!(ClusterLoadAssignment::decode(r.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap().cluster_name, "y2");
}

/// A restricted group is refused to a client that proves no identity in
/// it (here: a plaintext client), with PermissionDenied and nothing sent;
/// the refusal is counted. An open group on the same server still serves.
#[tokio::test]
async fn a_restricted_group_refuses_a_client_without_its_identity() {
    let access =
        AccessPolicy { restricted: [("gateway".to_string(), ["spiffe://cluster.local/ns/istio-system/sa/gw".to_string()].into())].into() };
    let server = XdsServer::with_access(Arc::new(|n: &Node| n.id.split('~').next().unwrap_or_default().to_string()), access);
    server.set("gateway", clusters(&[("secret-cluster", 1)]));
    server.set("sidecar", clusters(&[("a", 1)]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve_plaintext(listener));
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();

    let (tx, rx) = mpsc::channel(8);
    let mut rx = c.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(DiscoveryRequest { node: node("gateway~1"), ..req(CLUSTER, &[], "", "") }).await.unwrap();
    let status = tokio::time::timeout(WAIT, rx.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("\"gateway~1\"") && status.message().contains("--xds-gateway-identity"), "{}", status.message());
    assert!(server.proxies().is_empty());
    assert!(server.refusals().contains(&RefusalCount { reason: RefusalReason::GroupNotAllowed, count: 1 }));

    let (tx, rx) = mpsc::channel(8);
    let mut rx = c.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(DiscoveryRequest { node: node("sidecar~7"), ..req(CLUSTER, &[], "", "") }).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(names(&r.resources), ["a"]);
}
