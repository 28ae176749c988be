//! Tier: unit (in-process: a hostile HTTPS server made to misbehave on cue).
//!
//! The metadata exchange client against a hostile HTTPS server on loopback
//! (tokio-rustls + hyper, certificates made with rcgen here). One case per
//! behaviour, each asserting the exact reason.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use multicloud_agent::exchange::{FetchError, FetchPolicy, Remote, Trust};
use multicloud_core::pem::ed25519_public_key_to_pem;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type Body = BoxBody<Bytes, std::io::Error>;

/// What the handler sees of a request.
struct Seen {
    path: String,
    authorization: Option<String>,
    port: u16,
}

type Handler = Arc<dyn Fn(Seen) -> Response<Body> + Send + Sync>;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A server certificate for 127.0.0.1 and localhost, signed by `ca`.
fn server_identity(ca: &Ca) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

/// Serves HTTPS on 127.0.0.1:0 with `handler`. The accept loop ends by
/// itself after 16 connections or 20 s without one (and with the runtime).
async fn serve(ca: &Ca, handler: impl Fn(Seen) -> Response<Body> + Send + Sync + 'static) -> SocketAddr {
    let (certs, key) = server_identity(ca);
    let config = multicloud_agent::xds::tls::server_config(certs, key, None, &[b"http/1.1"]).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: Handler = Arc::new(handler);
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok(Ok((tcp, _))) = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Seen {
                        path: req.uri().path().to_string(),
                        authorization: req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string),
                        port: addr.port(),
                    };
                    let resp = handler(seen);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body = Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed();
    Response::builder().status(status).header("content-type", "application/json").body(body).unwrap()
}

fn json(body: impl Into<Bytes>) -> Response<Body> {
    full(StatusCode::OK, body)
}

fn redirect(location: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", location)
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
        .unwrap()
}

/// A streamed (chunked) body of `chunks` chunks, `pause` apart.
fn stream(chunk: Bytes, chunks: usize, pause: Duration) -> Response<Body> {
    let s = futures::stream::unfold(0usize, move |i| {
        let chunk = chunk.clone();
        async move {
            if i >= chunks {
                return None;
            }
            if i > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((Ok::<_, std::io::Error>(Frame::data(chunk)), i + 1))
        }
    });
    Response::builder().header("content-type", "application/json").body(StreamBody::new(s).boxed()).unwrap()
}

fn public_doc(authn_key_pub: &str) -> String {
    let root = new_ca("remote istio root");
    serde_json::json!({
        "clusterUUID": "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a0001",
        "rootCA": root.cert.pem(),
        "authnKeyPub": authn_key_pub,
    })
    .to_string()
}

fn ed25519_pem() -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    ed25519_public_key_to_pem(&key.verifying_key())
}

const PRIVATE_DOC: &str = r#"{"ingressGateways":[{"address":"127.0.2.1","port":15443}],"apiHost":"127.0.2.1:15444","networkName":"network-b","services":[{"hostname":"foo.abc.svc.cluster.local","ports":[{"name":"http","port":80}],"readyEndpoints":2}]}"#;

fn pinned(ca: &Ca) -> Trust {
    Trust::Pinned(ca.cert.pem())
}

fn remote(addr: SocketAddr, trust: Trust) -> Remote {
    Remote::new(&format!("https://{addr}/metadata/"), trust, FetchPolicy::default()).unwrap()
}

fn assert_reason<T: std::fmt::Debug>(r: Result<T, FetchError>, reason: &str) -> FetchError {
    let e = r.expect_err("the fetch should fail");
    assert_eq!(e.reason().as_str(), reason, "{e}");
    e
}

#[tokio::test]
async fn a_good_public_document_is_accepted() {
    let ca = new_ca("test ca");
    let key_pem = ed25519_pem();
    let doc = public_doc(&key_pem);
    let addr = serve(&ca, move |s| {
        assert_eq!(s.path, "/metadata/public/public.json");
        json(doc.clone())
    })
    .await;
    let got = remote(addr, pinned(&ca)).fetch_public().await.unwrap();
    assert_eq!(got.doc.cluster_uuid, "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a0001");
    assert_eq!(ed25519_public_key_to_pem(&got.key), key_pem);
    assert_eq!(got.root.certs_der.len(), 1);
}

#[tokio::test]
async fn a_good_private_document_is_fetched_with_the_bearer_token() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |s| {
        assert_eq!(s.path, "/metadata/private/multicluster.json");
        match s.authorization.as_deref() {
            Some("Bearer tok.en.sig") => json(PRIVATE_DOC),
            _ => full(StatusCode::UNAUTHORIZED, r#"{"error":"no token","reason":"TokenMissing"}"#),
        }
    })
    .await;
    let doc = remote(addr, pinned(&ca)).fetch_private("tok.en.sig").await.unwrap();
    assert_eq!(doc.network_name, "network-b");
    assert_eq!(doc.services.len(), 1);
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |_| json(r#"{"clusterUUID": "6f9c1c1e-"#)).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "MalformedJson");
    assert_eq!(e.metric_label(), "malformed_json");
}

#[tokio::test]
async fn missing_fields_are_named() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |_| json(r#"{"clusterUUID":"6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a0001","rootCA":"x"}"#)).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "InvalidDocument");
    assert!(e.to_string().contains("authnKeyPub"), "{e}");
}

#[tokio::test]
async fn a_non_ed25519_federation_key_is_refused_by_field() {
    let ca = new_ca("test ca");
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().public_key_pem();
    let doc = public_doc(&ec);
    let addr = serve(&ca, move |_| json(doc.clone())).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "InvalidDocument");
    assert!(e.to_string().contains("authnKeyPub: the public key is not an Ed25519 key"), "{e}");
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_ten_mib_body_is_refused_without_buffering_it() {
    static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
    let ca = new_ca("test ca");
    let doc = public_doc(&ed25519_pem());
    let addr = serve(&ca, move |s| {
        if s.path.starts_with("/warm/") {
            json(doc.clone())
        } else {
            stream(Bytes::from_static(&CHUNK), 160, Duration::ZERO) // 10 MiB, chunked
        }
    })
    .await;
    // Warm up TLS, the pool and the allocator before measuring.
    let warm = Remote::new(&format!("https://{addr}/warm"), pinned(&ca), FetchPolicy::default()).unwrap();
    warm.fetch_public().await.unwrap();
    let r = remote(addr, pinned(&ca));
    let before = vm_rss_kib();
    let e = assert_reason(r.fetch_public().await, "BodyTooLarge");
    let grown = vm_rss_kib().saturating_sub(before);
    eprintln!("RSS grew by {grown} KiB across the 10 MiB fetch");
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB across the call");
    assert_eq!(e.metric_label(), "body_too_large");
}

#[tokio::test]
async fn a_declared_content_length_over_the_limit_is_refused_up_front() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |_| {
        // Trickles (so the head is flushed): only the declared length can refuse it in time.
        let mut resp = stream(Bytes::from_static(b" "), 5, Duration::from_secs(1));
        resp.headers_mut().insert("content-length", "10485760".parse().unwrap());
        resp
    })
    .await;
    let started = Instant::now();
    assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "BodyTooLarge");
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_server_sending_one_byte_per_second_times_out() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |_| stream(Bytes::from_static(b" "), 30, Duration::from_secs(1))).await;
    let policy = FetchPolicy { connect_timeout: Duration::from_secs(1), total_timeout: Duration::from_secs(2), ..FetchPolicy::default() };
    let r = Remote::new(&format!("https://{addr}/metadata"), pinned(&ca), policy).unwrap();
    let started = Instant::now();
    assert_reason(r.fetch_public().await, "Timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(3500), "{took:?}");
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |s| redirect(format!("https://127.0.0.2:{}/metadata/public/public.json", s.port))).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "RedirectRefused");
    assert!(e.to_string().contains(&format!("127.0.0.2:{}", addr.port())), "{e}");
}

#[tokio::test]
async fn same_host_redirects_are_followed_up_to_three() {
    let ca = new_ca("test ca");
    let doc = public_doc(&ed25519_pem());
    let addr = serve(&ca, move |s| match s.path.as_str() {
        "/metadata/public/public.json" => redirect("/moved/1".into()),
        "/moved/1" => redirect("/moved/2".into()),
        "/moved/2" => redirect(format!("https://127.0.0.1:{}/moved/3", s.port)),
        "/moved/3" => json(doc.clone()),
        p => redirect(format!("{p}/again")), // /metadata/private/... loops
    })
    .await;
    let r = remote(addr, pinned(&ca));
    r.fetch_public().await.unwrap();
    let e = assert_reason(r.fetch_private("t").await, "RedirectRefused");
    assert!(e.to_string().contains("more than 3"), "{e}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_pin() {
    let (ca, other) = (new_ca("test ca"), new_ca("someone else"));
    let addr = serve(&other, |_| json("{}")).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "TlsVerificationFailed");
    assert_eq!(e.metric_label(), "tls_verification_failed");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_an_unknown_ca() {
    let unknown = new_ca("unknown ca");
    let doc = public_doc(&ed25519_pem());
    let addr = serve(&unknown, move |_| json(doc.clone())).await;
    remote(addr, Trust::InsecureSkipVerify).fetch_public().await.unwrap();
}

#[tokio::test]
async fn a_refused_token_reports_the_remote_reason() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |_| full(StatusCode::UNAUTHORIZED, r#"{"error":"token has expired","reason":"TokenExpired"}"#)).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_private("expired.token.value").await, "Unauthorized");
    let msg = e.to_string();
    assert!(msg.contains("TokenExpired") && msg.contains("401"), "{msg}");
    assert!(!msg.contains("expired.token.value"), "{msg}");
}

#[tokio::test]
async fn other_statuses_are_reported() {
    let ca = new_ca("test ca");
    let addr = serve(&ca, |_| full(StatusCode::NOT_FOUND, "{}")).await;
    let e = assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "HttpStatus");
    assert!(e.to_string().contains("404"), "{e}");
}

#[tokio::test]
async fn a_closed_port_is_connect_failed() {
    let ca = new_ca("test ca");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_reason(remote(addr, pinned(&ca)).fetch_public().await, "ConnectFailed");
}

#[test]
fn plain_http_endpoints_are_refused() {
    let e = Remote::new("http://127.0.0.1:8080/metadata", Trust::InsecureSkipVerify, FetchPolicy::default()).unwrap_err();
    assert_eq!(e.reason().as_str(), "EndpointInvalid");
    assert_eq!(e.metric_label(), "endpoint_invalid");
}
