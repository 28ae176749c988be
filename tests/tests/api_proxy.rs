//! Tier: fast (no Kubernetes; real Envoy 1.40 and the real binaries on loopback).
//!
//! The API proxy end to end (issue 6): cluster A (127.0.71.x) reaches
//! cluster B's (127.0.72.x) recorded API server through B's gateway Envoy,
//! with the kubeconfig (Istio remote secret) A's agent wrote.
//!
//! 1. a real `kube` client from that kubeconfig lists and watches services
//!    through B's gateway (TLS, SNI `api.cluster-72.example`);
//! 2. every refused case, one table row each: status, `Status` body, and
//!    nothing reaches the API server; Secret lists and watches reach it in
//!    the empty namespace instead;
//! 3. the API server sees only the proxy credential, never the peer token;
//!    neither appears in B's config_dump or logs;
//! 4. with a 6 s token lifetime the kubeconfig's token is replaced before
//!    it expires, the watch opened with the old token keeps streaming, and
//!    a client from the new kubeconfig works; a rotated proxy credential
//!    file reaches the gateway;
//! 5. a token shaped as a Deckhouse cluster mints it for its istiod
//!    (`iss: d8-istio`, `scope: api`, 366 days) is refused unless B's object
//!    for A allows that lifetime (`spec.apiProxy.maxTokenLifetimeSeconds`).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use multicloud_core::token::Scope;
use multicloud_e2e::fixtures::{random_uuid, unix_now};
use multicloud_e2e::mesh::{api_host, start_mesh, ApiOptions, Cluster, MeshOptions};
use multicloud_e2e::{http, wait_until, SimCluster};
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);
const TTL: i64 = 6;

fn kube_client(path: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig");
    let rt = tokio::runtime::Handle::current();
    let cfg = rt.block_on(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())).expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn token_in(path: &std::path::Path) -> String {
    let v: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).expect("kubeconfig")).expect("yaml");
    v["users"][0]["user"]["token"].as_str().expect("token").to_string()
}

fn claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("jws");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("claims")
}

#[test]
fn the_api_proxy_end_to_end() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let _guard = rt.enter();
    let cs = start_mesh(
        &[SimCluster(71), SimCluster(72)],
        MeshOptions { ads: Some(true), api: Some(ApiOptions { token_ttl_seconds: TTL }), ..Default::default() },
    );
    let (a, b) = (&cs[0], &cs[1]);
    let b_name = Cluster::object_name(b.sim);
    a.agent.wait_condition(&b_name, "Ready", "True", READY);
    b.agent.wait_condition(&Cluster::object_name(a.sim), "Ready", "True", READY);
    let kubeconfig = a.agent.remote_secret_path(&b_name);
    wait_until("A's agent to write B's remote secret", READY, || if kubeconfig.exists() { Ok(()) } else { Err("absent".into()) });
    let apiserver = b.apiserver.as_ref().expect("B's API server");
    let credential = b.api_credential.clone().expect("B's proxy credential");

    // (1) list and watch through B's gateway with a real kube client.
    let mut first_token = token_in(&kubeconfig);
    let services: Api<Service> = Api::all(kube_client(&kubeconfig));
    let list = wait_until("a list through B's gateway", READY, || {
        first_token = token_in(&kubeconfig);
        let services: Api<Service> = Api::all(kube_client(&kubeconfig));
        rt.block_on(services.list(&ListParams::default())).map_err(|e| e.to_string())
    });
    let names: Vec<String> = list.items.iter().filter_map(|s| s.metadata.name.clone()).collect();
    assert_eq!(names, ["foo", "bar", "kubernetes"]);
    drop(services);
    let ns: Api<Service> = Api::namespaced(kube_client(&kubeconfig), "abc");
    let watch_token = token_in(&kubeconfig);
    let mut stream = rt.block_on(ns.watch(&WatchParams::default(), "0")).expect("watch").boxed();
    match rt.block_on(tokio::time::timeout(Duration::from_secs(10), stream.next())) {
        Ok(Some(Ok(WatchEvent::Added(s)))) => assert_eq!(s.metadata.name.as_deref(), Some("foo")),
        other => panic!("first watch event: {other:?}"),
    }
    let seen = apiserver.requests();
    let watch_req = seen.iter().find(|r| r.path.contains("watch=")).expect("the watch reached the API server");
    assert!(watch_req.path.starts_with("/api/v1/namespaces/abc/services?"), "{}", watch_req.path);

    // (3) the API server saw the proxy credential, never the peer's token.
    for r in &seen {
        assert_eq!(r.header("authorization"), Some(format!("Bearer {credential}").as_str()), "{} {}", r.method, r.path);
        assert_eq!(r.header("x-multicloud-peer"), Some(a.id.uuid.as_str()));
        for (k, v) in &r.headers {
            assert!(!v.contains(&first_token) && !v.contains(&watch_token), "peer token in header {k}");
        }
    }
    let dump = b.gateway.admin_get("/config_dump?include_eds").expect("config_dump");
    assert!(dump.contains("multicloud-api-proxy-credential"), "the credential secret is in the dump (redacted)");
    let log = b.gateway.log();
    for (what, s) in [("proxy credential", credential.as_str()), ("peer token", first_token.as_str()), ("peer token", watch_token.as_str())]
    {
        assert!(!dump.contains(s), "{what} in B's config_dump");
        assert!(!log.contains(s), "{what} in B's gateway log");
    }
    assert!(!b.agent.log().contains(&credential), "proxy credential in B's agent log");
    assert!(!a.agent.log().contains(&first_token), "peer token in A's agent log");

    // (2) refused requests, one row each; none reaches the API server.
    refused_table(a, b);

    // (5) A Deckhouse cluster's istiod: one `scope: api` token minted as
    //     Deckhouse mints it (iss d8-istio, 366 days) and kept. Refused by
    //     default (25 hours at most); passes once B's object for A allows
    //     that lifetime; refused again when the allowance is taken back.
    deckhouse_token_needs_the_peers_allowance(a, b);

    // (4) token rotation with a 6 s lifetime.
    let exp1 = claims(&watch_token)["exp"].as_i64().expect("exp");
    let new_token = wait_until("the kubeconfig's token to be re-issued", Duration::from_secs(TTL as u64 + 2), || {
        let t = token_in(&kubeconfig);
        if t != watch_token && claims(&t)["nbf"].as_i64() > claims(&watch_token)["nbf"].as_i64() {
            Ok(t)
        } else {
            Err("same token".into())
        }
    });
    assert!(unix_now() < exp1, "re-issued before the old token expired");
    assert_eq!(claims(&new_token)["scope"], "api");
    wait_until("the old token to expire", Duration::from_secs(TTL as u64 + 2), || {
        if unix_now() > exp1 + 1 {
            Ok(())
        } else {
            Err("valid".into())
        }
    });
    // The watch opened with the old token keeps streaming after its expiry.
    match rt.block_on(tokio::time::timeout(Duration::from_secs(5), stream.next())) {
        Ok(Some(Ok(WatchEvent::Bookmark(_)))) | Ok(Some(Ok(WatchEvent::Added(_)))) => {}
        other => panic!("watch event after the old token expired: {other:?}"),
    }
    // (The old token itself stays accepted for the filter's 60 s clock skew
    // after exp; the table's "expired" row shows a token beyond it refused.)
    // A client from the current kubeconfig works.
    let fresh: Api<Service> = Api::namespaced(kube_client(&kubeconfig), "abc");
    assert_eq!(rt.block_on(fresh.list(&ListParams::default())).expect("list with the new token").items.len(), 2);

    // A rotated proxy credential file reaches the gateway.
    let rotated = format!("rotated-{}", random_uuid());
    let tmp = b.agent.dir().join(".api-credential.tmp");
    std::fs::write(&tmp, &rotated).expect("write");
    std::fs::rename(&tmp, b.agent.dir().join("api-credential")).expect("rename");
    wait_until("the rotated proxy credential to reach the API server", Duration::from_secs(20), || {
        let fresh: Api<Service> = Api::namespaced(kube_client(&kubeconfig), "abc");
        rt.block_on(fresh.list(&ListParams::default())).map_err(|e| e.to_string())?;
        let last = apiserver.requests().last().and_then(|r| r.header("authorization").map(String::from));
        if last.as_deref() == Some(format!("Bearer {rotated}").as_str()) {
            Ok(())
        } else {
            Err(format!("{last:?}"))
        }
    });
    drop(stream);
}

struct Row {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    status: u16,
    reason: &'static str,
    /// Part of the Status message naming the refusal.
    detail: &'static str,
}

fn refused_table(a: &Cluster, b: &Cluster) {
    let key = multicloud_agent::keys::load_or_generate(&a.agent.key_path()).expect("A's federation key");
    let now = unix_now();
    let (a_id, b_id) = (a.id.uuid.as_str(), b.id.uuid.as_str());
    let mint = |aud: &str, scope: Scope, nbf: i64, ttl: i64| multicloud_agent::keys::mint(&key, a_id, aud, scope, nbf, ttl);
    let bearer = |t: String| vec![("authorization".to_string(), format!("Bearer {t}"))];
    let good = || bearer(mint(b_id, Scope::Api, now, 300));
    let stranger = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let with = |mut h: Vec<(String, String)>, k: &str, v: &str| {
        h.push((k.to_string(), v.to_string()));
        h
    };
    let row = |name, method, path, headers, status, reason, detail| Row { name, method, path, headers, status, reason, detail };
    let rows = vec![
        row("create", "POST", "/api/v1/namespaces/abc/services", good(), 405, "MethodNotAllowed", "verb_not_allowed"),
        row("update", "PUT", "/api/v1/namespaces/abc/services/foo", good(), 405, "MethodNotAllowed", "verb_not_allowed"),
        row("patch", "PATCH", "/api/v1/namespaces/abc/services/foo", good(), 405, "MethodNotAllowed", "verb_not_allowed"),
        row("delete", "DELETE", "/api/v1/namespaces/abc/services/foo", good(), 405, "MethodNotAllowed", "verb_not_allowed"),
        row("delete collection", "DELETE", "/api/v1/namespaces/abc/pods", good(), 405, "MethodNotAllowed", "verb_not_allowed"),
        row("secret get", "GET", "/api/v1/namespaces/istio-system/secrets/cacerts", good(), 403, "Forbidden", "resource_not_allowed"),
        row(
            "exec",
            "GET",
            "/api/v1/namespaces/abc/pods/foo/exec?command=sh&stdin=true",
            good(),
            403,
            "Forbidden",
            "subresource_not_allowed",
        ),
        row("attach", "GET", "/api/v1/namespaces/abc/pods/foo/attach", good(), 403, "Forbidden", "subresource_not_allowed"),
        row("portforward", "GET", "/api/v1/namespaces/abc/pods/foo/portforward", good(), 403, "Forbidden", "subresource_not_allowed"),
        row("pod proxy", "GET", "/api/v1/namespaces/abc/pods/foo/proxy/", good(), 403, "Forbidden", "subresource_not_allowed"),
        row("service proxy", "GET", "/api/v1/namespaces/abc/services/foo:80/proxy/", good(), 403, "Forbidden", "subresource_not_allowed"),
        row(
            "impersonate user",
            "GET",
            "/api/v1/services",
            with(good(), "impersonate-user", "system:admin"),
            403,
            "Forbidden",
            "impersonation",
        ),
        row(
            "impersonate group",
            "GET",
            "/api/v1/services",
            with(good(), "impersonate-group", "system:masters"),
            403,
            "Forbidden",
            "impersonation",
        ),
        row("no token", "GET", "/api/v1/services", vec![], 401, "Unauthorized", "TokenMissing"),
        row(
            "another audience",
            "GET",
            "/api/v1/services",
            bearer(mint(&random_uuid(), Scope::Api, now, 300)),
            401,
            "Unauthorized",
            "TokenWrongAudience",
        ),
        row(
            "another scope",
            "GET",
            "/api/v1/services",
            bearer(mint(b_id, Scope::PrivateMulticluster, now, 60)),
            403,
            "Forbidden",
            "TokenWrongScope",
        ),
        row("expired", "GET", "/api/v1/services", bearer(mint(b_id, Scope::Api, now - 600, 300)), 401, "Unauthorized", "TokenExpired"),
        row(
            "non-peer key",
            "GET",
            "/api/v1/services",
            bearer(multicloud_agent::keys::mint(&stranger, a_id, b_id, Scope::Api, now, 300)),
            401,
            "Unauthorized",
            "TokenBadSignature",
        ),
        row(
            "oversized header",
            "GET",
            "/api/v1/services",
            with(good(), "x-padding", &"p".repeat(20 * 1024)),
            431,
            "BadRequest",
            "headers_too_large",
        ),
    ];
    let apiserver = b.apiserver.as_ref().expect("API server");
    let before = apiserver.requests().len();
    let host = api_host(b.sim);
    for r in &rows {
        let mut headers: Vec<(&str, &str)> = vec![("host", host.as_str())];
        headers.extend(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let resp = http::request(r.method, &b.gateway_url(r.path), &headers);
        assert_eq!(resp.status, r.status, "{}: {}", r.name, resp.text());
        let body = resp.json();
        assert_eq!(body["kind"], "Status", "{}", r.name);
        assert_eq!(body["status"], "Failure", "{}", r.name);
        assert_eq!(body["code"], r.status, "{}", r.name);
        assert_eq!(body["reason"], r.reason, "{}: {body}", r.name);
        assert!(body["message"].as_str().unwrap_or_default().contains(r.detail), "{}: {body}", r.name);
    }
    let after = apiserver.requests();
    assert_eq!(after.len(), before, "refused requests reached the API server: {:?}", &after[before..]);
    // Control: the same route with a good token passes.
    let ok = http::request("GET", &b.gateway_url("/api/v1/services"), &[("host", &host), ("authorization", &good()[0].1)]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    // A Secret list or watch (istiod's remote credentials controller) is not
    // refused: Envoy sends it to the empty namespace, its query as it was,
    // without the peer's token.
    for (asked, sent) in [
        (
            "/api/v1/secrets?allowWatchBookmarks=true&fieldSelector=type%21%3Dhelm.sh%2Frelease.v1&sendInitialEvents=true&watch=true",
            "/api/v1/namespaces/istio-multicloud-empty/secrets?allowWatchBookmarks=true&fieldSelector=type%21%3Dhelm.sh%2Frelease.v1&sendInitialEvents=true&watch=true",
        ),
        ("/api/v1/namespaces/abc/secrets", "/api/v1/namespaces/istio-multicloud-empty/secrets"),
        ("/api/v1/watch/secrets", "/api/v1/watch/namespaces/istio-multicloud-empty/secrets"),
    ] {
        let token = good()[0].1.clone();
        let before = apiserver.requests().len();
        let r = http::request("GET", &b.gateway_url(asked), &[("host", &host), ("authorization", &token)]);
        // (The recording server answers what it answers; the guard passed it.)
        assert!(!r.text().contains("multicloud API proxy"), "{asked}: refused by the guard: {}", r.text());
        let seen = apiserver.requests();
        assert_eq!(seen.len(), before + 1, "{asked} reached the API server once");
        let last = seen.last().expect("the request reached the API server");
        assert_eq!(last.path, sent, "{asked} goes to the empty namespace");
        assert_ne!(last.header("authorization"), Some(token.as_str()), "the peer's token never reaches the API server");
    }
}

fn deckhouse_token_needs_the_peers_allowance(a: &Cluster, b: &Cluster) {
    use multicloud_core::token::{sign, Audience, Claims};
    let key = multicloud_agent::keys::load_or_generate(&a.agent.key_path()).expect("A's federation key");
    let now = unix_now();
    let claims = Claims {
        iss: "d8-istio".into(),
        sub: a.id.uuid.clone(),
        aud: Audience::One(b.id.uuid.clone()),
        scope: "api".into(),
        nbf: now,
        exp: now + 366 * 86_400,
    };
    let auth = format!("Bearer {}", sign(&key, &claims));
    let host = api_host(b.sim);
    let list = || http::request("GET", &b.gateway_url("/api/v1/services"), &[("host", host.as_str()), ("authorization", auth.as_str())]);
    let r = list();
    assert_eq!(r.status, 401, "a 366-day token by default: {}", r.text());
    assert!(r.text().contains("TokenLifetimeTooLong"), "{}", r.text());
    // B's operator allows A's api tokens 366 days (spec.apiProxy on B's object for A).
    let allow = |limit: Option<i64>| {
        let path = b.agent.dir().join("standalone.yaml");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("standalone")).expect("json");
        let objects = v["objects"].as_array_mut().expect("objects");
        let o = objects.iter_mut().find(|o| o["metadata"]["name"] == Cluster::object_name(a.sim).as_str()).expect("B's object for A");
        match limit {
            Some(l) => o["spec"]["apiProxy"] = serde_json::json!({"maxTokenLifetimeSeconds": l}),
            None => {
                o["spec"].as_object_mut().expect("spec").remove("apiProxy");
            }
        }
        let tmp = b.agent.dir().join(".standalone.tmp");
        std::fs::write(&tmp, v.to_string()).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    };
    allow(Some(366 * 86_400));
    wait_until("the allowance to reach B's API guard", READY, || {
        let r = list();
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    });
    allow(None);
    wait_until("the allowance to be taken back", READY, || {
        let r = list();
        if r.status == 401 && r.text().contains("TokenLifetimeTooLong") {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    });
}
