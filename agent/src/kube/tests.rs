//! Tier: mock. Kubernetes mode against kube's `tower_test` mock API server,
//! as kube-rs/controller-rs's fixtures do: each scenario's API-server task
//! asserts every request in order — method, path, query, content type, the
//! body fields that matter — and answers it with a recorded object.
//!
//! Kept for what a real API server cannot be made to do on cue: a Lease that
//! another replica holds or let expire at an exact time, a 409 at a chosen
//! moment, a malformed key Secret, a NodePort gateway on nodes that do not
//! exist here, and the exact requests (order, content type) the agent sends.
//! The same behaviours against a real kube-apiserver, with deploy/'s RBAC,
//! are in tests/tests/kube_agent.rs (real tier).

use super::facts::*;
use super::key_secret::*;
use super::lease::*;
use super::*;
use crate::cli::check_kube::check_inputs;
use crate::crd::{condition, IstioMulticloud, IstioMulticloudSpec, IstioMulticloudStatus};
use crate::facts::LocalFacts;
use crate::sinks::status::KubeStatusSink;
use crate::sinks::wasmplugin::WasmPluginSink;
use crate::sinks::StatusSink as _;
use crate::sources::kubernetes::*;
use http::{header::CONTENT_TYPE, Method, Request, Response};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::ServicePort as KubeServicePort;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use multicloud_core::metadata::{ExportedService, ServicePort};
use serde_json::json;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (kube::Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One request as the API server saw it.
struct Seen {
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

/// Answer with the request's own body, as the API server does on create/update.
const ECHO: Value = Value::Null;

/// Expects the next request to be `method path`, answers `code` + `reply`
/// (`ECHO`: the request body with a new resourceVersion).
async fn expect(api: &mut ApiServer, method: Method, path: &str, code: u16, reply: Value) -> Seen {
    let next = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await;
    let (req, send) = next
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client hung up; expected {method} {path}"));
    assert_eq!((req.method(), req.uri().path()), (&method, path), "unexpected request {}", req.uri());
    let query = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let reply = if reply == ECHO {
        let mut echoed = body.clone();
        echoed["metadata"]["resourceVersion"] = json!("100");
        echoed
    } else {
        reply
    };
    let response = Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
        .unwrap();
    send.send_response(response);
    Seen { query, content_type, body }
}

/// Asserts the client sends nothing more (every client handle must be dropped).
/// A first lease holder's two requests: no Lease yet (404), then created (201).
async fn expect_lease_created(api: &mut ApiServer) {
    expect(api, Method::GET, LEASE_PATH, 404, not_found("leases", "istio-multicloud-agent")).await;
    expect(api, Method::POST, LEASES_PATH, 201, ECHO).await;
}

async fn expect_no_more(api: &mut ApiServer) {
    let next = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await.expect("the client was not dropped");
    if let Some((req, _)) = next {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
           "details": {"name": name, "kind": kind}, "code": 404})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn opts() -> KubeOptions {
    KubeOptions {
        holder_identity: "agent-a-xyz".into(),
        network_name: "network-a".into(),
        api_host: "api.cluster-a.example.com".into(),
        ..KubeOptions::default()
    }
}

fn status() -> IstioMulticloudStatus {
    let mut s = IstioMulticloudStatus::default();
    s.set_condition(
        condition::PUBLIC,
        Some(true),
        crate::reasons::Reason::Fetched,
        "public metadata fetched".into(),
        "2025-01-01T00:00:00Z",
        Some(3),
    );
    s.observed_generation = Some(3);
    s
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/istio-multicloud-agent";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases";
const STATUS_PATH: &str = "/apis/istio-multicloud.dev/v1alpha1/istiomulticlouds/cluster-b/status";

fn imc_reply(status: &IstioMulticloudStatus) -> Value {
    json!({"apiVersion": "istio-multicloud.dev/v1alpha1", "kind": "IstioMulticloud",
           "metadata": {"name": "cluster-b", "generation": 3, "resourceVersion": "11"},
           "spec": {"metadataEndpoint": "https://istio.cluster-b.example.com/metadata"},
           "status": status})
}

fn assert_status_apply(seen: &Seen, status: &IstioMulticloudStatus) {
    assert_eq!(seen.query.get("fieldManager").map(String::as_str), Some("istio-multicloud-agent"), "{:?}", seen.query);
    assert_eq!(seen.query.get("force").map(String::as_str), Some("true"), "{:?}", seen.query);
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(seen.body["apiVersion"], "istio-multicloud.dev/v1alpha1");
    assert_eq!(seen.body["kind"], "IstioMulticloud");
    assert_eq!(seen.body["status"], serde_json::to_value(status).unwrap());
    assert_eq!(seen.body["status"]["conditions"][0]["type"], "PublicMetadataExchangeReady");
    assert!(seen.body.get("spec").is_none(), "a status apply must not claim spec fields");
}

/// Scenario 1 — the API server is kube's tower_test mock (no API server can
/// run here). The sink creates the absent Lease first, and only then applies
/// the status with SSA as `istio-multicloud-agent`.
#[tokio::test]
async fn the_status_sink_takes_the_lease_before_it_applies_status() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, LEASE_PATH, 404, not_found("leases", "istio-multicloud-agent")).await;
        let created = expect(&mut api, Method::POST, LEASES_PATH, 201, ECHO).await.body;
        assert_eq!(created["metadata"]["name"], "istio-multicloud-agent");
        assert_eq!(created["spec"]["holderIdentity"], "agent-a-xyz");
        assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
        assert!(created["spec"]["renewTime"].is_string());
        let seen = expect(&mut api, Method::PATCH, STATUS_PATH, 200, imc_reply(&status())).await;
        assert_status_apply(&seen, &status());
        // Still the leader: the next write goes straight to the PATCH.
        let seen = expect(&mut api, Method::PATCH, STATUS_PATH, 200, imc_reply(&status())).await;
        assert_status_apply(&seen, &status());
        expect_no_more(&mut api).await;
    });
    let lease = Arc::new(LeaseGuard::new(client.clone(), &opts()));
    let sink = KubeStatusSink::new(client, lease.clone(), None);
    sink.publish("cluster-b", &status()).await.unwrap();
    assert!(lease.is_leader());
    sink.publish("cluster-b", &status()).await.unwrap();
    drop((sink, lease));
    server.await.unwrap();
}

/// Scenario 2 — the API server is kube's tower_test mock (no API server can
/// run here). Another replica holds a live Lease: no status PATCH is sent and
/// publishing still succeeds (the leader writes).
#[tokio::test]
async fn no_status_is_written_while_another_replica_holds_the_lease() {
    let (client, mut api) = mock_client();
    let renewed = Timestamp::now().to_string();
    let server = tokio::spawn(async move {
        let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "istio-multicloud-agent", "namespace": "istio-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": "agent-b-abc", "leaseDurationSeconds": 15, "renewTime": renewed, "acquireTime": renewed}});
        expect(&mut api, Method::GET, LEASE_PATH, 200, held).await;
        expect_no_more(&mut api).await;
    });
    let lease = Arc::new(LeaseGuard::new(client.clone(), &opts()));
    let sink = KubeStatusSink::new(client, lease.clone(), None);
    sink.publish("cluster-b", &status()).await.unwrap();
    assert!(!lease.is_leader());
    drop((sink, lease));
    server.await.unwrap();
}

/// The API server is kube's tower_test mock (no API server can run here).
/// A Lease whose holder stopped renewing is taken over (update guarded by its
/// resourceVersion), then status is written.
#[tokio::test]
async fn an_expired_lease_is_taken_over_before_status_is_written() {
    let (client, mut api) = mock_client();
    let stale = (Timestamp::now() - SignedDuration::from_secs(60)).to_string();
    let server = tokio::spawn(async move {
        let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "istio-multicloud-agent", "namespace": "istio-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": "agent-b-abc", "leaseDurationSeconds": 15, "renewTime": stale, "leaseTransitions": 2}});
        expect(&mut api, Method::GET, LEASE_PATH, 200, held).await;
        let seen = expect(&mut api, Method::PUT, LEASE_PATH, 200, ECHO).await;
        assert_eq!(seen.body["metadata"]["resourceVersion"], "7", "the update must be conditional");
        assert_eq!(seen.body["spec"]["holderIdentity"], "agent-a-xyz");
        assert_eq!(seen.body["spec"]["leaseTransitions"], 3);
        let seen = expect(&mut api, Method::PATCH, STATUS_PATH, 200, imc_reply(&status())).await;
        assert_status_apply(&seen, &status());
        expect_no_more(&mut api).await;
    });
    let lease = Arc::new(LeaseGuard::new(client.clone(), &opts()));
    KubeStatusSink::new(client, lease, None).publish("cluster-b", &status()).await.unwrap();
    server.await.unwrap();
}

const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2x1c3RlckFSb290\n-----END CERTIFICATE-----\n";

/// Scenario 3 — the API server is kube's tower_test mock (no API server can
/// run here), answering with recorded objects: the kube-system Namespace,
/// Istio's root-cert ConfigMap, the gateway Service with a load balancer, and
/// an exported Service with its EndpointSlice.
#[tokio::test]
async fn local_facts_are_read_from_the_cluster_objects() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/kube-system",
            200,
            json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "kube-system", "uid": "0a1b2c3d-0000-4000-8000-00000000000a"}}),
        )
        .await;
        expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert",
            200,
            json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system"},
            "data": {"root-cert.pem": ROOT_PEM}}),
        )
        .await;
        let seen = expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/istio-system/services",
            200,
            list(
                "ServiceList",
                vec![json!({
            "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}},
            "spec": {"type": "LoadBalancer", "ports": [
                {"name": "http2", "port": 80, "targetPort": 8080, "nodePort": 30080},
                {"name": "tls", "port": 15443, "targetPort": 15443, "nodePort": 31443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "gw.cluster-a.example.com"}]}}})],
            ),
        )
        .await;
        assert_eq!(seen.query.get("labelSelector").map(String::as_str), Some("istio=ingressgateway"));
        let seen = expect(
            &mut api,
            Method::GET,
            "/api/v1/services",
            200,
            list(
                "ServiceList",
                vec![json!({
            "metadata": {"name": "foo", "namespace": "abc", "labels": {"istio-multicloud.dev/export": "true"}},
            "spec": {"ports": [
                {"name": "http-web", "port": 8080, "targetPort": 8080},
                {"name": "metrics", "port": 9090, "appProtocol": "http", "targetPort": 9090},
                {"name": "db", "port": 5432, "targetPort": 5432}]}})],
            ),
        )
        .await;
        assert_eq!(seen.query.get("labelSelector").map(String::as_str), Some("istio-multicloud.dev/export=true"));
        let seen = expect(&mut api, Method::GET, "/apis/discovery.k8s.io/v1/namespaces/abc/endpointslices", 200, json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"},
            "items": [{
                "metadata": {"name": "foo-x1", "namespace": "abc", "labels": {"kubernetes.io/service-name": "foo"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": "abc", "name": "foo-1"}},
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": "abc", "name": "foo-2"}},
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "namespace": "abc", "name": "foo-3"}}]}]})).await;
        assert_eq!(seen.query.get("labelSelector").map(String::as_str), Some("kubernetes.io/service-name=foo"));
        expect_no_more(&mut api).await;
    });
    let facts = read_local_facts(&client, &opts()).await.unwrap();
    drop(client);
    server.await.unwrap();
    let expected = LocalFacts {
        cluster_uuid: "0a1b2c3d-0000-4000-8000-00000000000a".into(),
        root_ca: ROOT_PEM.into(),
        ingress_gateways: vec![
            IngressGateway { address: "203.0.113.10".into(), port: 15443 },
            IngressGateway { address: "gw.cluster-a.example.com".into(), port: 15443 },
        ],
        api_host: "api.cluster-a.example.com".into(),
        network_name: "network-a".into(),
        services: vec![ExportedService {
            hostname: "foo.abc.svc.cluster.local".into(),
            ports: vec![
                ServicePort { name: "http-web".into(), port: 8080, protocol: Some("http".into()) },
                ServicePort { name: "metrics".into(), port: 9090, protocol: Some("http".into()) },
                ServicePort { name: "db".into(), port: 5432, protocol: None },
            ],
            ready_endpoints: 2,
        }],
        mesh_mode: Default::default(),
        local_endpoints: vec![],
    };
    assert_eq!(facts, expected);
}

/// The API server is kube's tower_test mock (no API server can run here).
/// Without a load balancer address, the gateway is reached on its NodePort at
/// each node's ExternalIP (InternalIP when it has none).
#[tokio::test]
async fn a_nodeport_gateway_is_advertised_on_the_node_addresses() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        let seen = expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/istio-system/services",
            200,
            list(
                "ServiceList",
                vec![json!({
            "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
            "spec": {"type": "NodePort", "ports": [{"name": "mesh", "port": 15443, "targetPort": 15443, "nodePort": 31443}]}})],
            ),
        )
        .await;
        assert_eq!(seen.query.get("labelSelector").map(String::as_str), Some("istio=ingressgateway"));
        expect(&mut api, Method::GET, "/api/v1/nodes", 200, list("NodeList", vec![
            json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.1"}, {"type": "ExternalIP", "address": "198.51.100.1"}]}}),
            json!({"metadata": {"name": "n2"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.2"}]}}),
        ])).await;
        expect_no_more(&mut api).await;
    });
    let gws = read_gateways(&client, &opts()).await.unwrap();
    drop(client);
    server.await.unwrap();
    assert_eq!(
        gws,
        // By address, whatever order the Nodes come in (the facts stay the
        // same across watch relists).
        vec![IngressGateway { address: "10.1.0.2".into(), port: 31443 }, IngressGateway { address: "198.51.100.1".into(), port: 31443 }]
    );
}

/// Scenario 4 — the API server is kube's tower_test mock (no API server can
/// run here). The first start creates the key Secret; the next start loads
/// that very key from it.
#[tokio::test]
async fn the_federation_key_secret_is_created_once_and_then_loaded() {
    const SECRET_PATH: &str = "/api/v1/namespaces/istio-system/secrets/istio-multicloud-federation-key";
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, SECRET_PATH, 404, not_found("secrets", KEY_SECRET_NAME)).await;
        let created = expect(&mut api, Method::POST, "/api/v1/namespaces/istio-system/secrets", 201, ECHO).await.body;
        assert_eq!(created["metadata"]["name"], KEY_SECRET_NAME);
        assert_eq!(created["type"], "Opaque");
        assert!(created["data"]["private.pem"].is_string());
        // Second start: the Secret as the API server stored it.
        expect(&mut api, Method::GET, SECRET_PATH, 200, created).await;
        expect_no_more(&mut api).await;
    });
    let first = SecretKeyStore::new(client.clone(), &opts()).load_or_generate().await.unwrap();
    let second = SecretKeyStore::new(client.clone(), &opts()).load_or_generate().await.unwrap();
    drop(client);
    server.await.unwrap();
    assert_eq!(first.to_bytes(), second.to_bytes());
}

/// The API server is kube's tower_test mock (no API server can run here).
#[tokio::test]
async fn a_key_secret_without_private_pem_says_what_to_do() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/istio-system/secrets/istio-multicloud-federation-key",
            200,
            json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEY_SECRET_NAME, "namespace": "istio-system"}, "data": {}}),
        )
        .await;
    });
    let err = SecretKeyStore::new(client, &opts()).load_or_generate().await.unwrap_err().to_string();
    server.await.unwrap();
    assert!(err.contains("istio-system/istio-multicloud-federation-key") && err.contains("delete the Secret"), "{err}");
}

#[test]
fn a_lease_expires_after_its_duration_without_renewal() {
    let now = Timestamp::now();
    let spec = |holder: Option<&str>, ago: i64| LeaseSpec {
        holder_identity: holder.map(String::from),
        lease_duration_seconds: Some(15),
        renew_time: Some(MicroTime(now - SignedDuration::from_secs(ago))),
        ..LeaseSpec::default()
    };
    assert!(!lease_expired(&spec(Some("b"), 10), now));
    assert!(lease_expired(&spec(Some("b"), 16), now));
    assert!(lease_expired(&spec(None, 0), now));
}

#[test]
fn port_protocols_follow_istio_naming() {
    let port = |name: &str, app: Option<&str>| KubeServicePort {
        name: Some(name.into()),
        app_protocol: app.map(String::from),
        port: 1,
        ..Default::default()
    };
    assert_eq!(port_protocol(&port("grpc-web-x", None)).as_deref(), Some("grpc-web"));
    assert_eq!(port_protocol(&port("grpc-x", None)).as_deref(), Some("grpc"));
    assert_eq!(port_protocol(&port("tcp", None)).as_deref(), Some("tcp"));
    assert_eq!(port_protocol(&port("web", Some("kubernetes.io/h2c"))).as_deref(), Some("kubernetes.io/h2c"));
    assert_eq!(port_protocol(&port("web", None)), None);
}

#[test]
fn peers_map_from_objects() {
    let mut obj = IstioMulticloud::new(
        "cluster-b",
        IstioMulticloudSpec {
            metadata_endpoint: "https://istio.cluster-b.example.com/metadata".into(),
            metadata: None,
            enable_ingress_gateway: true,
            api_proxy: None,
        },
    );
    obj.metadata.generation = Some(4);
    let (name, peer) = desired_peer(obj.clone()).unwrap();
    assert_eq!((name.as_str(), peer.generation), ("cluster-b", Some(4)));
    assert_eq!(peer.spec, obj.spec);
}

fn imc(name: &str, generation: i64, endpoint: &str) -> Value {
    json!({"apiVersion": "istio-multicloud.dev/v1alpha1", "kind": "IstioMulticloud",
           "metadata": {"name": name, "generation": generation, "resourceVersion": format!("{generation}0")},
           "spec": {"metadataEndpoint": endpoint}})
}

/// The API server is kube's tower_test mock (no API server can run here).
/// The initial list is published whole; watch events then update and remove
/// peers; the watcher stops when nobody listens any more.
#[tokio::test]
async fn watched_objects_are_published_as_the_desired_peers() {
    const PATH: &str = "/apis/istio-multicloud.dev/v1alpha1/istiomulticlouds";
    let (client, mut api) = mock_client();
    let (tx, mut rx) = tokio::sync::watch::channel(BTreeMap::new());
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let list_reply = json!({"apiVersion": "istio-multicloud.dev/v1alpha1", "kind": "IstioMulticloudList", "metadata": {"resourceVersion": "100"},
            "items": [imc("a", 1, "https://a.example.com/metadata"), imc("b", 1, "https://b.example.com/metadata")]});
        expect(&mut api, Method::GET, PATH, 200, list_reply).await;
        // The watch: answered only once the test has seen the listed peers.
        let (req, send) = api.next_request().await.expect("a watch request");
        assert_eq!(req.uri().path(), PATH);
        assert!(req.uri().query().unwrap_or_default().contains("watch=true"), "{}", req.uri());
        listed_rx.await.unwrap();
        let events = [
            json!({"type": "MODIFIED", "object": imc("b", 2, "https://b2.example.com/metadata")}),
            json!({"type": "DELETED", "object": imc("a", 1, "https://a.example.com/metadata")}),
        ];
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        send.send_response(Response::builder().status(200).body(Body::from(body.into_bytes())).unwrap());
        // The re-watch after that stream ends is left unanswered; keep the
        // handle alive until the watcher is gone.
        while api.next_request().await.is_some() {}
    });
    let watcher = tokio::spawn(watch_objects(client, tx, None));
    let within = Duration::from_secs(5);
    let listed = tokio::time::timeout(within, rx.wait_for(|m| !m.is_empty())).await.unwrap().unwrap().clone();
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["a", "b"], "the initial list is published whole");
    listed_tx.send(()).unwrap();
    let done = tokio::time::timeout(within, rx.wait_for(|m| m.len() == 1)).await.unwrap().unwrap().clone();
    let b = &done["b"];
    assert_eq!((b.spec.metadata_endpoint.as_str(), b.generation), ("https://b2.example.com/metadata", Some(2)));
    drop(rx);
    tokio::time::timeout(within, watcher).await.expect("watch_objects returns once every receiver is gone").unwrap();
    server.await.unwrap();
}

fn data_plane(uuid: &str) -> crate::data_plane::DataPlane {
    let facts = LocalFacts {
        cluster_uuid: uuid.into(),
        root_ca: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
        ingress_gateways: vec![IngressGateway { address: "203.0.113.10".into(), port: 15443 }],
        api_host: String::new(),
        network_name: "network-a".into(),
        services: vec![],
        mesh_mode: Default::default(),
        local_endpoints: vec![],
    };
    crate::data_plane::test_data_plane(facts, "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n".into(), vec![])
}

/// The WasmPlugin sink of `multicloud-edge` in `istio-system`, with its Lease.
fn wasmplugin_sink(client: kube::Client) -> (WasmPluginSink, Arc<LeaseGuard>) {
    let lease = Arc::new(LeaseGuard::new(client.clone(), &opts()));
    (WasmPluginSink::new(client, "istio-system", "multicloud-edge", lease.clone()), lease)
}

const WASMPLUGIN_PATH: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/multicloud-edge";

/// Scenario — the API server is kube's tower_test mock (no API server can
/// run here). With `--wasmplugin`, the lease holder writes the edge
/// configuration into the existing WasmPlugin's `spec.pluginConfig` by
/// server-side apply, once per change.
#[tokio::test]
async fn the_edge_configuration_is_applied_to_the_wasmplugin_once_per_change() {
    use crate::sinks::DataPlaneSink as _;
    let (client, mut api) = mock_client();
    let uuid = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a";
    let server = tokio::spawn(async move {
        expect_lease_created(&mut api).await;
        let existing = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "multicloud-edge", "namespace": "istio-system", "resourceVersion": "7"},
            "spec": {"url": "oci://example/edge:1", "pluginConfig": {}}});
        expect(&mut api, Method::GET, WASMPLUGIN_PATH, 200, existing.clone()).await;
        let seen = expect(&mut api, Method::PATCH, WASMPLUGIN_PATH, 200, existing.clone()).await;
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert_eq!(seen.query.get("fieldManager").map(String::as_str), Some("istio-multicloud-agent"));
        assert_eq!(seen.body["kind"], "WasmPlugin");
        assert_eq!(seen.body["spec"]["pluginConfig"]["public"]["clusterUUID"], uuid);
        assert!(seen.body["spec"].get("url").is_none(), "only pluginConfig is ours: {}", seen.body);
        // A changed configuration: written again (still the leader).
        expect(&mut api, Method::GET, WASMPLUGIN_PATH, 200, existing.clone()).await;
        let seen = expect(&mut api, Method::PATCH, WASMPLUGIN_PATH, 200, existing).await;
        assert_eq!(seen.body["spec"]["pluginConfig"]["private"]["networkName"], "network-b");
        expect_no_more(&mut api).await;
    });
    let (sink, lease) = wasmplugin_sink(client);
    let dp = data_plane(uuid);
    sink.apply(&dp).await.unwrap();
    sink.apply(&dp).await.unwrap(); // unchanged: nothing sent
    let mut changed = dp.clone();
    changed.edge.private.network_name = "network-b".into();
    sink.apply(&changed).await.unwrap();
    drop((sink, lease));
    server.await.unwrap();
}

/// Scenario — tower_test mock API server. The WasmPlugin does not exist:
/// the agent does not create it, and says what to do.
#[tokio::test]
async fn a_missing_wasmplugin_is_not_created_and_the_error_says_what_to_do() {
    use crate::sinks::DataPlaneSink as _;
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        expect_lease_created(&mut api).await;
        expect(&mut api, Method::GET, WASMPLUGIN_PATH, 404, not_found("wasmplugins.extensions.istio.io", "multicloud-edge")).await;
        expect_no_more(&mut api).await;
    });
    let (sink, lease) = wasmplugin_sink(client);
    let err = sink.apply(&data_plane("6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a")).await.unwrap_err();
    assert!(format!("{err:#}").contains("deploy/overlays/wasmplugin"), "{err:#}");
    drop((sink, lease));
    server.await.unwrap();
}

/// Scenario — tower_test mock API server. `check --kubernetes` for an object
/// that does not exist stops at once with `NotFound` and what to do, and
/// reads nothing else.
#[tokio::test]
async fn check_inputs_name_a_missing_object() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        expect(
            &mut api,
            Method::GET,
            "/apis/istio-multicloud.dev/v1alpha1/istiomulticlouds/cluster-z",
            404,
            not_found("istiomulticlouds", "cluster-z"),
        )
        .await;
        expect_no_more(&mut api).await;
    });
    let err = check_inputs(client, &opts(), "cluster-z").await.map(|_| ()).unwrap_err();
    assert_eq!(err.reason, "NotFound");
    assert!(err.detail.contains("cluster-z") && err.hint.contains("kubectl get istiomulticlouds"), "{err:?}");
    server.await.unwrap();
}
