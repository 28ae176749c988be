//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The gateway filter in a real Envoy 1.40 (V8): documents, refusals, token
//! rules and run-time configuration, end to end over loopback.
//!
//! Each test starts its own gateway (one Envoy, one recording upstream) on
//! its own loopback range; the cases inside a test share it, which is honest
//! because the filter keeps no per-request state besides a cache of tokens
//! whose signatures already verified.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::Mac as _;
use multicloud_e2e::fixtures::{edge_config, sample_private, unix_now, ClusterIdentity};
use multicloud_e2e::gateway::{Gateway, Push};
use multicloud_e2e::http::{self, Resp};
use multicloud_e2e::{paths, SimCluster};

const PUBLIC: &str = "/metadata/public/public.json";
const SPIFFE: &str = "/metadata/public/spiffe-bundle-endpoint";
const PRIVATE: &str = "/metadata/private/multicluster.json";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn assert_refusal(r: &Resp, status: u16, reason: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: status (body {})", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{case}: content-type");
    let body = r.json();
    assert_eq!(body["reason"], reason, "{case}: reason in {body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}: error message in {body}");
}

#[test]
fn the_edge_serves_every_document_with_validators_and_refuses_the_rest() {
    let b = ClusterIdentity::generate("b");
    let a = ClusterIdentity::generate("a");
    let cluster = SimCluster(11);
    let config = edge_config(&b, &[&a], sample_private(cluster));
    let gw = Gateway::start(cluster, &serde_json::to_string(&config).unwrap());

    // public.json: exactly this cluster's public document.
    let r = http::get(&gw.url(PUBLIC));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    let doc = r.json();
    assert_eq!(doc["clusterUUID"], b.uuid);
    assert_eq!(doc["rootCA"], b.root_pem());
    assert_eq!(doc["authnKeyPub"], b.peer_key().authn_key_pub);
    let etag = r.header("etag").expect("etag").to_string();
    let not_modified = http::request("GET", &gw.url(PUBLIC), &[("if-none-match", &etag)]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    // The SPIFFE bundle: one x509-svid key holding the root in x5c.
    let r = http::get(&gw.url(SPIFFE));
    assert_eq!(r.status, 200);
    let bundle = r.json();
    assert_eq!(bundle["spiffe_sequence"], 1);
    assert_eq!(bundle["spiffe_refresh_hint"], 300);
    let keys = bundle["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["use"], "x509-svid");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    let x5c = STANDARD.decode(keys[0]["x5c"][0].as_str().expect("x5c")).expect("x5c base64");
    assert_eq!(x5c, b.root.cert.der().to_vec(), "x5c holds the root certificate");

    // The private document, for a peer's token.
    let auth = bearer(&a.token_for(&b, "private-multicluster"));
    let r = http::request("GET", &gw.url(PRIVATE), &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    let private: multicloud_core::metadata::PrivateMetadata = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(private, config.private);

    // HEAD: same headers, Content-Length of the GET body, no body.
    for (path, auth) in [(PUBLIC, None), (SPIFFE, None), (PRIVATE, Some(auth.as_str()))] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let get = http::request("GET", &gw.url(path), &headers);
        let head = http::request("HEAD", &gw.url(path), &headers);
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has no body");
        assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()), "HEAD {path} content-length");
        assert_eq!(head.header("etag"), get.header("etag"), "HEAD {path} etag");
    }

    // Refusals: unknown documents and methods.
    for path in ["/metadata/public/nope", "/metadata/private/federation.json", "/metadata/", "/metadata/public/public.json/x"] {
        assert_refusal(&http::get(&gw.url(path)), 404, "MetadataNotFound", path);
    }
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = http::request(method, &gw.url(PUBLIC), &[]);
        assert_refusal(&r, 405, "MethodNotAllowed", method);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }

    // Other routes pass straight to the upstream; metadata never does.
    let r = http::get(&gw.url("/app/hello"));
    assert_eq!((r.status, r.text().as_str()), (200, "upstream GET /app/hello\n"));
    let reached: Vec<String> = gw.upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(reached, vec!["/app/hello".to_string()], "only the non-federation request reached the upstream");

    // Counters in Envoy's /stats.
    assert_eq!(gw.counter("served.public_json"), 3);
    assert_eq!(gw.counter("not_modified.public_json"), 1);
    assert_eq!(gw.counter("served.spiffe_bundle"), 3);
    assert_eq!(gw.counter("served.private_multicluster_json"), 3);
    assert_eq!(gw.counter("refused.not_found"), 4);
    assert_eq!(gw.counter("refused.method_not_allowed"), 5);
}

/// Mints a token with PyJWT (an independent implementation) in the
/// project's virtualenv.
fn pyjwt_token(key_pem: &str, claims: &serde_json::Value) -> String {
    use std::io::Write as _;
    let script = "import sys, json, jwt\nkey = sys.stdin.read()\nprint(jwt.encode(json.loads(sys.argv[1]), key, algorithm='EdDSA'))\n";
    let mut child = std::process::Command::new(paths::python())
        .args(["-c", script, &claims.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().unwrap().write_all(key_pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyJWT failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn compact(header: &serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()), URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn token_rules_hold_in_envoy() {
    let b = ClusterIdentity::generate("b");
    let a = ClusterIdentity::generate("a");
    let stranger = ClusterIdentity::generate("c");
    let cluster = SimCluster(12);
    let gw = Gateway::start(cluster, &serde_json::to_string(&edge_config(&b, &[&a], sample_private(cluster))).unwrap());
    let now = unix_now();

    let claims =
        serde_json::json!({"iss": "a", "sub": a.uuid, "aud": b.uuid, "scope": "private-multicluster", "nbf": now, "exp": now + 60});
    let alg_none = compact(&serde_json::json!({"alg": "none"}), &claims, b"");
    // HS256 keyed with the peer's public key PEM: the classic key-confusion attack.
    let hs256 = {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "HS256", "typ": "JWT"}).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(a.peer_key().authn_key_pub.as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    };
    // Signed by a key that is not A's, but claiming to be A.
    let forged = {
        let mut impostor = ClusterIdentity::generate("impostor");
        impostor.uuid = a.uuid.clone();
        impostor.token_for(&b, "private-multicluster")
    };
    let oversized = {
        let mut c = claims.clone();
        c["pad"] = serde_json::Value::String("x".repeat(9 * 1024));
        pyjwt_token(&a.federation_key_pem(), &c)
    };
    let by_pyjwt = pyjwt_token(&a.federation_key_pem(), &claims);

    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("missing header", None, 401, "TokenMissing"),
        ("wrong auth scheme", Some("Basic YTpi".into()), 401, "TokenWrongScheme"),
        ("malformed base64", Some(bearer("!!!.@@@.###")), 401, "TokenMalformed"),
        ("alg none", Some(bearer(&alg_none)), 401, "TokenUnsupportedAlgorithm"),
        ("HS256 with the public key as secret", Some(bearer(&hs256)), 401, "TokenUnsupportedAlgorithm"),
        ("bad signature", Some(bearer(&forged)), 401, "TokenBadSignature"),
        ("expired", Some(bearer(&a.token_with(&b.uuid, "private-multicluster", now - 400, now - 200))), 401, "TokenExpired"),
        ("not yet valid", Some(bearer(&a.token_with(&b.uuid, "private-multicluster", now + 200, now + 260))), 401, "TokenNotYetValid"),
        ("wrong aud", Some(bearer(&a.token_with(&a.uuid, "private-multicluster", now, now + 60))), 401, "TokenWrongAudience"),
        ("unknown sub", Some(bearer(&stranger.token_for(&b, "private-multicluster"))), 401, "TokenUnknownPeer"),
        ("over 8 KiB", Some(bearer(&oversized)), 401, "TokenTooLarge"),
        ("scope api", Some(bearer(&a.token_for(&b, "api"))), 403, "TokenWrongScope"),
    ];
    let mut failures = Vec::new();
    for (case, auth, status, reason) in &cases {
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("authorization", a)).into_iter().collect();
        let r = http::request("GET", &gw.url(PRIVATE), &headers);
        let got_reason = serde_json::from_slice::<serde_json::Value>(&r.body).ok().map(|v| v["reason"].clone());
        if r.status != *status || got_reason.as_ref().and_then(|v| v.as_str()) != Some(*reason) {
            failures.push(format!("{case}: want {status} {reason}, got {} {}", r.status, r.text()));
        } else {
            assert_refusal(&r, *status, reason, case);
        }
    }
    assert!(failures.is_empty(), "token cases failed:\n{}", failures.join("\n"));

    for (case, token) in [("minted by this project", a.token_for(&b, "private-multicluster")), ("minted by PyJWT", by_pyjwt)] {
        let r = http::request("GET", &gw.url(PRIVATE), &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{case}: {}", r.text());
        assert_eq!(r.json()["networkName"], "network-12", "{case}");
    }

    assert!(gw.upstream.requests().is_empty(), "no metadata request may reach the upstream");
    assert_eq!(gw.counter("refused.token_expired"), 1);
    assert_eq!(gw.counter("refused.token_wrong_scope"), 1);
    assert_eq!(gw.counter("refused.token_unsupported_algorithm"), 2);
    assert_eq!(gw.counter("served.private_multicluster_json"), 2);
}

#[test]
fn a_bad_configuration_is_refused_and_the_old_documents_keep_serving() {
    let b = ClusterIdentity::generate("b");
    let a = ClusterIdentity::generate("a");
    let c = ClusterIdentity::generate("c");
    let cluster = SimCluster(13);
    let good = edge_config(&b, &[&a], sample_private(cluster));
    let gw = Gateway::start(cluster, &serde_json::to_string(&good).unwrap());
    let before = http::get(&gw.url(PUBLIC));
    assert_eq!(before.status, 200);

    let mut bad_root = good.clone();
    bad_root.public.root_ca = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
    let mut bad_peer_key = good.clone();
    bad_peer_key.peers[0].authn_key_pub = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let mut bad_gateway = good.clone();
    bad_gateway.private.ingress_gateways[0].address = "not an address".into();
    let cases = [
        ("not JSON", "{\"public\":".to_string(), "not valid JSON"),
        ("bad root", serde_json::to_string(&bad_root).unwrap(), "public.rootCA"),
        (
            "peer key not Ed25519",
            serde_json::to_string(&bad_peer_key).unwrap(),
            "peers[0].authnKeyPub: the public key is not an Ed25519 key",
        ),
        ("bad gateway address", serde_json::to_string(&bad_gateway).unwrap(), "private.ingressGateways[0].address"),
    ];
    for (case, json, logged) in &cases {
        assert_eq!(gw.push_config(json), Push::Rejected, "{case}");
        let line = "invalid multicloud edge configuration: ";
        let log = gw.envoy.log();
        assert!(log.lines().any(|l| l.contains(line) && l.contains(logged)), "{case}: expected one log line naming {logged:?}");
        let now = http::get(&gw.url(PUBLIC));
        assert_eq!((now.status, now.header("etag")), (200, before.header("etag")), "{case}: old document still served");
        assert_eq!(now.body, before.body, "{case}");
        let r = http::request("GET", &gw.url(PRIVATE), &[("authorization", &bearer(&a.token_for(&b, "private-multicluster")))]);
        assert_eq!(r.status, 200, "{case}: old peers still accepted");
    }

    // A good configuration after rejected ones still applies: new peer, new network.
    let mut next = edge_config(&b, &[&a, &c], sample_private(cluster));
    next.private.network_name = "network-13-renamed".into();
    assert_eq!(gw.push_config(&serde_json::to_string(&next).unwrap()), Push::Applied);
    let r = http::request("GET", &gw.url(PRIVATE), &[("authorization", &bearer(&c.token_for(&b, "private-multicluster")))]);
    assert_eq!(r.status, 200, "the new peer is accepted: {}", r.text());
    assert_eq!(r.json()["networkName"], "network-13-renamed");
    assert!(gw.upstream.requests().is_empty());
}

#[test]
fn without_a_valid_configuration_the_edge_fails_closed() {
    let cluster = SimCluster(14);
    // The very first configuration is invalid: there is nothing to fall back on.
    let gw = Gateway::start(cluster, "{\"public\": {}}");
    for path in [PUBLIC, SPIFFE, PRIVATE, "/metadata/other"] {
        let r = http::get(&gw.url(path));
        assert!(r.status >= 500, "{path}: a filter without configuration must not answer 2xx/4xx ({} {})", r.status, r.text());
    }
    let r = http::get(&gw.url("/app/ok"));
    assert_eq!(r.status, 200, "other routes keep working");
    let reached: Vec<String> = gw.upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(reached, vec!["/app/ok".to_string()], "no metadata request reached the upstream");
    assert!(gw.envoy.log().contains("invalid multicloud edge configuration: not valid JSON for the edge configuration: missing field"));
}

/// A WasmPlugin installed before the agent wrote its configuration hands
/// the filter `{}`: the gateway takes it (no NACK), and the documents answer
/// 503 `EdgeUnavailable` until a real configuration arrives, which applies.
#[test]
fn an_empty_configuration_is_taken_as_not_configured_yet() {
    let b = ClusterIdentity::generate("b");
    let a = ClusterIdentity::generate("a");
    let cluster = SimCluster(15);
    let gw = Gateway::start(cluster, "{}");
    for path in [PUBLIC, SPIFFE, PRIVATE] {
        let r = http::get(&gw.url(path));
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert_eq!(r.json()["reason"], "EdgeUnavailable", "{path}");
    }
    assert_eq!(http::get(&gw.url("/app/ok")).status, 200, "other routes keep working");
    assert_eq!(gw.push_config(" { } "), Push::Applied, "an empty configuration is not refused");
    let good = edge_config(&b, &[&a], sample_private(cluster));
    assert_eq!(gw.push_config(&serde_json::to_string(&good).unwrap()), Push::Applied);
    assert_eq!(http::get(&gw.url(PUBLIC)).status, 200, "the agent's configuration serves");
    assert!(gw.envoy.log().contains("no configuration yet (empty)"));
    let reached: Vec<String> = gw.upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(reached, vec!["/app/ok".to_string()], "no metadata request reached the upstream");
}
