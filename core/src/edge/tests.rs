use super::*;
use crate::token::{Audience, Claims};
use ed25519_dalek::SigningKey;

const A: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a";
const B: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b";
const NOW: i64 = 1_800_000_000;

fn root_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

/// B's edge, federating with A.
fn edge_b(a_key: &SigningKey) -> Edge {
    edge_b_rotating(a_key, &[])
}

/// B's edge, federating with A, which also publishes `a_additional`
/// (`additionalAuthnKeysPub`: A's key rotation).
fn edge_b_rotating(a_key: &SigningKey, a_additional: &[&SigningKey]) -> Edge {
    let b_key = SigningKey::from_bytes(&[2; 32]);
    Edge::compile(EdgeConfig {
        public: PublicMetadata {
            cluster_uuid: B.into(),
            root_ca: root_pem(),
            authn_key_pub: crate::pem::ed25519_public_key_to_pem(&b_key.verifying_key()),
            additional_authn_keys_pub: Vec::new(),
        },
        private: crate::metadata::sample_private(),
        peers: vec![PeerKey {
            cluster_uuid: A.into(),
            authn_key_pub: crate::pem::ed25519_public_key_to_pem(&a_key.verifying_key()),
            max_api_token_lifetime_seconds: None,
            additional_authn_keys_pub: a_additional.iter().map(|k| crate::pem::ed25519_public_key_to_pem(&k.verifying_key())).collect(),
        }],
        spiffe: SpiffeSettings::default(),
        max_token_lifetime_seconds: 600,
        public_max_age_seconds: 60,
        api: ApiSettings::default(),
        mesh: Default::default(),
    })
    .unwrap()
}

fn token(key: &SigningKey, scope: &str) -> String {
    crate::token::sign(
        key,
        &Claims { iss: "t".into(), sub: A.into(), aud: Audience::One(B.into()), scope: scope.into(), nbf: NOW, exp: NOW + 60 },
    )
}

fn get<'a>(edge: &'a Edge, path: &str, auth: Option<&str>, cache: &mut TokenCache) -> Outcome<'a> {
    edge.decide(&Request { method: "GET", path, authorization: auth, if_none_match: None }, || NOW, cache)
}

fn status(o: Outcome<'_>) -> (u32, Option<Event>) {
    match o {
        Outcome::Continue => (0, None),
        Outcome::Reply(r, e) => (r.status, Some(e)),
    }
}

#[test]
fn public_documents_are_served_with_validators() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let edge = edge_b(&a);
    let mut cache = TokenCache::default();
    let Outcome::Reply(reply, Event::Served(Doc::Public)) = get(&edge, "/metadata/public/public.json?x=1", None, &mut cache) else {
        panic!("public.json not served")
    };
    let doc: PublicMetadata = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(doc, edge.config().public);
    assert!(reply.headers.contains(&("etag".into(), edge.etag(Doc::Public).into())));
    let inm = format!("W/{}", edge.etag(Doc::Public));
    let o =
        edge.decide(&Request { method: "GET", path: PUBLIC_JSON_PATH, authorization: None, if_none_match: Some(&inm) }, || NOW, &mut cache);
    assert_eq!(status(o), (304, Some(Event::NotModified(Doc::Public))));
    let o = edge.decide(&Request { method: "HEAD", path: SPIFFE_BUNDLE_PATH, ..Default::default() }, || NOW, &mut cache);
    assert_eq!(status(o), (200, Some(Event::Served(Doc::SpiffeBundle))));
}

#[test]
fn unknown_paths_and_methods_are_refused_and_others_pass() {
    let edge = edge_b(&SigningKey::from_bytes(&[1; 32]));
    let mut c = TokenCache::default();
    assert_eq!(status(get(&edge, "/metadata/public/nope", None, &mut c)), (404, Some(Event::Refused(Refusal::NotFound))));
    assert_eq!(status(get(&edge, "/metadata/", None, &mut c)).0, 404);
    assert_eq!(status(get(&edge, "/healthz", None, &mut c)), (0, None));
    let o = edge.decide(&Request { method: "POST", path: PUBLIC_JSON_PATH, ..Default::default() }, || NOW, &mut c);
    assert_eq!(status(o).0, 405);
}

#[test]
fn private_document_needs_a_peer_token_of_the_right_scope() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let edge = edge_b(&a);
    let mut c = TokenCache::default();
    let good = format!("Bearer {}", token(&a, "private-multicluster"));
    let (s, _) = status(get(&edge, PRIVATE_MULTICLUSTER_PATH, Some(&good), &mut c));
    assert_eq!(s, 200);
    assert_eq!(c.len(), 1);
    // The cached token still answers, and still has its times checked.
    assert_eq!(status(get(&edge, PRIVATE_MULTICLUSTER_PATH, Some(&good), &mut c)).0, 200);
    let later = edge.decide(
        &Request { method: "GET", path: PRIVATE_MULTICLUSTER_PATH, authorization: Some(&good), if_none_match: None },
        || NOW + 200,
        &mut c,
    );
    assert_eq!(status(later), (401, Some(Event::Refused(Refusal::Token(TokenError::Expired)))));
    let api = format!("Bearer {}", token(&a, "api"));
    assert_eq!(
        status(get(&edge, PRIVATE_MULTICLUSTER_PATH, Some(&api), &mut c)),
        (403, Some(Event::Refused(Refusal::Token(TokenError::WrongScope))))
    );
    let stranger = format!("Bearer {}", token(&SigningKey::from_bytes(&[3; 32]), "private-multicluster"));
    assert_eq!(
        status(get(&edge, PRIVATE_MULTICLUSTER_PATH, Some(&stranger), &mut c)).1,
        Some(Event::Refused(Refusal::Token(TokenError::BadSignature)))
    );
    assert_eq!(status(get(&edge, PRIVATE_MULTICLUSTER_PATH, None, &mut c)).1, Some(Event::Refused(Refusal::Token(TokenError::Missing))));
    assert_eq!(
        status(get(&edge, PRIVATE_MULTICLUSTER_PATH, Some("Basic abc"), &mut c)).1,
        Some(Event::Refused(Refusal::Token(TokenError::WrongScheme)))
    );
    let Outcome::Reply(r, _) = get(&edge, PRIVATE_MULTICLUSTER_PATH, None, &mut c) else { panic!() };
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["reason"], "TokenMissing");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
}

#[test]
fn the_token_cache_stays_bounded() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let edge = edge_b(&a);
    let mut c = TokenCache::default();
    for i in 0..(TOKEN_CACHE_CAPACITY + 10) {
        let t = crate::token::sign(
            &a,
            &Claims {
                iss: format!("{i}"),
                sub: A.into(),
                aud: Audience::One(B.into()),
                scope: "private-multicluster".into(),
                nbf: NOW,
                exp: NOW + 60,
            },
        );
        assert_eq!(edge.authorize(Some(&format!("Bearer {t}")), Scope::PrivateMulticluster, NOW, &mut c), Ok(()));
        assert!(c.len() <= TOKEN_CACHE_CAPACITY);
    }
}

#[test]
fn invalid_configurations_name_the_field() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let mut cfg = edge_b(&a).config().clone();
    cfg.public.root_ca = "not a pem".into();
    assert!(Edge::compile(cfg.clone()).err().unwrap().0.starts_with("public.rootCA"));
    let mut cfg2 = edge_b(&a).config().clone();
    cfg2.peers[0].cluster_uuid = B.into();
    assert!(Edge::compile(cfg2).err().unwrap().0.contains("own UUID"));
    assert!(Edge::from_json(b"{").err().unwrap().to_string().contains("not valid JSON"));
    let mut cfg3 = edge_b(&a).config().clone();
    cfg3.private.ingress_gateways[0].port = 0;
    assert_eq!(Edge::compile(cfg3).err().unwrap().0, "private.ingressGateways[0].port: must be 1-65535");
}

#[test]
fn every_event_has_a_distinct_counter() {
    let names: std::collections::HashSet<_> = Event::all().map(Event::stat_name).collect();
    assert_eq!(names.len(), Event::COUNT);
    let idx: std::collections::HashSet<_> = Event::all().map(Event::index).collect();
    assert_eq!(idx.len(), Event::COUNT);
    assert!(idx.iter().all(|i| *i < Event::COUNT));
}

#[test]
fn the_api_guard_authenticates_then_authorizes() {
    use crate::apiguard::{ApiRead, ApiRefusal, PeerLimiter};
    let a = SigningKey::from_bytes(&[1; 32]);
    let edge = edge_b(&a);
    let mut c = TokenCache::default();
    let mut l = PeerLimiter::default();
    let api = format!("Bearer {}", token(&a, "api"));
    let private = format!("Bearer {}", token(&a, "private-multicluster"));
    let run = |method: &'static str, path: &'static str, auth: &str, c: &mut TokenCache, l: &mut PeerLimiter| {
        let hs: Vec<(&str, &str)> = vec![("authorization", auth)];
        match edge.decide_api(ApiRequest { method, path, authorization: Some(auth), headers: hs.into_iter() }, NOW as u64 * 1000, c, l) {
            ApiOutcome::Allow { peer, read, rewrite: None } => Ok((peer.to_string(), read)),
            ApiOutcome::Allow { rewrite: Some(p), .. } => Ok((p, ApiRead::List)),
            ApiOutcome::Refuse(reply, r) => Err((reply.status, r)),
        }
    };
    assert_eq!(run("GET", "/api/v1/services", &api, &mut c, &mut l), Ok((A.to_string(), ApiRead::List)));
    assert_eq!(
        run("GET", "/api/v1/secrets?limit=500", &api, &mut c, &mut l),
        Ok(("/api/v1/namespaces/istio-multicloud-empty/secrets?limit=500".to_string(), ApiRead::List)),
        "a Secret list goes to the empty namespace"
    );
    assert_eq!(run("GET", "/api/v1/services", &private, &mut c, &mut l), Err((403, ApiRefusal::Token(TokenError::WrongScope))));
    assert_eq!(run("DELETE", "/api/v1/services/x", &api, &mut c, &mut l), Err((405, ApiRefusal::VerbNotAllowed)));
    assert_eq!(run("GET", "/api/v1/namespaces/abc/secrets/db", &api, &mut c, &mut l), Err((403, ApiRefusal::ResourceNotAllowed)));
    assert_eq!(
        run("GET", "/api/v1/secrets", "Bearer x.y.z", &mut c, &mut l),
        Err((401, ApiRefusal::Token(TokenError::Malformed))),
        "authentication first"
    );
}

#[test]
fn the_mesh_section_is_optional_and_validated_with_the_rest() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let mut config = edge_b(&a).config().clone();
    // A configuration without "mesh" (as older agents render it) still
    // parses, and one without mesh peers renders without it.
    let json = serde_json::to_value(&config).unwrap();
    assert!(json.get("mesh").is_none(), "{json}");
    let edge = Edge::from_json(json.to_string().as_bytes()).unwrap();
    assert!(edge.mesh().peers().is_empty());
    let mut with_mesh = json.clone();
    with_mesh["mesh"] = serde_json::json!({"peers": [
        {"name": "cluster-a", "clusterUUID": A, "sni": format!("{A}.peer.multicloud"), "services": ["foo.abc.svc.cluster.local"]}
    ]});
    let edge = Edge::from_json(with_mesh.to_string().as_bytes()).unwrap();
    assert_eq!(edge.mesh().peers()[0].name, "cluster-a");
    assert_eq!(edge.mesh().counter_names().len(), 4);
    with_mesh["mesh"]["peers"][0]["clusterUUID"] = B.into();
    let err = Edge::from_json(with_mesh.to_string().as_bytes()).err().unwrap().to_string();
    assert_eq!(err, "invalid multicloud edge configuration: mesh.peers[0].clusterUUID: is this cluster's own UUID");
    with_mesh["mesh"]["peers"] = serde_json::json!([{"name": "x"}]);
    let err = Edge::from_json(with_mesh.to_string().as_bytes()).err().unwrap().to_string();
    assert!(err.contains("mesh.peers[0].clusterUUID"), "{err}");
    config.mesh.peers.clear();
    assert!(Edge::compile(config).is_ok());
}

/// A token as a Deckhouse cluster mints it for its istiod (`iss: d8-istio`,
/// `scope: api`, 366 days), reused for its whole life.
/// A token shaped as Deckhouse mints it: `iss: d8-istio`, 366 days.
fn deckhouse_token(key: &SigningKey, scope: &str) -> String {
    crate::token::sign(
        key,
        &Claims {
            iss: "d8-istio".into(),
            sub: A.into(),
            aud: Audience::One(B.into()),
            scope: scope.into(),
            nbf: NOW,
            exp: NOW + 366 * 86_400,
        },
    )
}

#[test]
fn a_long_lived_api_token_passes_only_for_a_peer_allowed_it() {
    use crate::apiguard::{ApiRefusal, PeerLimiter};
    let a = SigningKey::from_bytes(&[1; 32]);
    let auth = format!("Bearer {}", deckhouse_token(&a, "api"));
    let decide = |edge: &Edge| {
        let hs: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
        let req = ApiRequest { method: "GET", path: "/api/v1/services", authorization: Some(&auth), headers: hs.into_iter() };
        match edge.decide_api(req, (NOW as u64 + 200 * 86_400) * 1000, &mut TokenCache::default(), &mut PeerLimiter::default()) {
            ApiOutcome::Allow { .. } => Ok(()),
            ApiOutcome::Refuse(reply, r) => Err((reply.status, r)),
        }
    };
    // The default: 25 hours at most.
    assert_eq!(decide(&edge_b(&a)), Err((401, ApiRefusal::Token(TokenError::LifetimeTooLong))));
    // The peer's object allows 366 days: the same token passes, 200 days on.
    let mut cfg = edge_b(&a).config().clone();
    cfg.peers[0].max_api_token_lifetime_seconds = Some(366 * 86_400);
    assert_eq!(decide(&Edge::compile(cfg.clone()).unwrap()), Ok(()));
    // Only for api tokens: the private document keeps its own limit.
    let edge = Edge::compile(cfg.clone()).unwrap();
    let long_private = deckhouse_token(&a, "private-multicluster");
    let private = format!("Bearer {long_private}");
    assert_eq!(
        status(get(&edge, PRIVATE_MULTICLUSTER_PATH, Some(&private), &mut TokenCache::default())),
        (401, Some(Event::Refused(Refusal::Token(TokenError::LifetimeTooLong))))
    );
    // A limit past 367 days, or not positive, is a configuration error.
    for bad in [0, -1, 367 * 86_400 + 1] {
        cfg.peers[0].max_api_token_lifetime_seconds = Some(bad);
        let err = Edge::compile(cfg.clone()).err().unwrap().0;
        assert!(err.contains("peers[0].maxApiTokenLifetimeSeconds"), "{err}");
    }
}

#[test]
fn an_empty_plugin_configuration_means_not_configured_yet() {
    for empty in [&b""[..], b"  \n", b"{}", b" { \n } "] {
        assert!(is_unconfigured(empty), "{:?}", String::from_utf8_lossy(empty));
    }
    for not_empty in [&b"{\"public\":{}}"[..], b"[]", b"null", b"{", b"x"] {
        assert!(!is_unconfigured(not_empty), "{:?}", String::from_utf8_lossy(not_empty));
    }
}

#[test]
fn during_a_peers_key_rotation_tokens_of_either_key_are_taken_and_none_of_a_dropped_key() {
    let (old, new) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[11; 32]));
    let bearer = |k: &SigningKey| format!("Bearer {}", token(k, "private-multicluster"));
    // Staged: A still signs with `old` and publishes `new` beside it.
    let staged = edge_b_rotating(&old, &[&new]);
    // Promoted: A signs with `new`; `old` stays published until its tokens expire.
    let promoted = edge_b_rotating(&new, &[&old]);
    for (edge, when) in [(&staged, "staged"), (&promoted, "promoted")] {
        for k in [&old, &new] {
            let (s, _) = status(get(edge, PRIVATE_MULTICLUSTER_PATH, Some(&bearer(k)), &mut TokenCache::default()));
            assert_eq!(s, 200, "{when}: a token of either key is taken");
        }
    }
    // Finished: only `new`.
    let finished = edge_b(&new);
    assert_eq!(
        status(get(&finished, PRIVATE_MULTICLUSTER_PATH, Some(&bearer(&old)), &mut TokenCache::default())),
        (401, Some(Event::Refused(Refusal::Token(TokenError::BadSignature))))
    );
    // A stranger's key is no more welcome during a rotation.
    let stranger = SigningKey::from_bytes(&[99; 32]);
    assert_eq!(status(get(&staged, PRIVATE_MULTICLUSTER_PATH, Some(&bearer(&stranger)), &mut TokenCache::default())).0, 401);
}

#[test]
fn a_peer_publishing_too_many_or_repeated_additional_keys_is_refused_by_name() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let config = |extra: Vec<String>| {
        let mut c = edge_b(&a).config().clone();
        c.peers[0].additional_authn_keys_pub = extra;
        Edge::compile(c).err().map(|e| e.to_string())
    };
    let pem = |n: u8| crate::pem::ed25519_public_key_to_pem(&SigningKey::from_bytes(&[n; 32]).verifying_key());
    assert_eq!(config(vec![pem(2), pem(3)]), None);
    assert!(config(vec![pem(2), pem(3), pem(4)]).unwrap().contains("peers[0].additionalAuthnKeysPub: more than 2 keys"));
    assert!(config(vec![pem(1)]).unwrap().contains("peers[0].additionalAuthnKeysPub: repeats a key"));
    assert!(config(vec![pem(2), pem(2)]).unwrap().contains("additionalAuthnKeysPub: repeats a key"));
    assert!(config(vec!["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()])
        .unwrap()
        .contains("additionalAuthnKeysPub: an entry is not an Ed25519 public key"));
}

#[test]
fn an_edge_publishing_its_own_next_key_compiles_and_serves_it() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let mut c = edge_b(&a).config().clone();
    let next = crate::pem::ed25519_public_key_to_pem(&SigningKey::from_bytes(&[12; 32]).verifying_key());
    c.public.additional_authn_keys_pub = vec![next.clone()];
    let edge = Edge::compile(c).unwrap();
    let Outcome::Reply(reply, _) = get(&edge, PUBLIC_JSON_PATH, None, &mut TokenCache::default()) else { panic!("not served") };
    let doc: PublicMetadata = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(doc.additional_authn_keys_pub, vec![next]);
}
