//! The edge's request decisions (`Edge::decide` under `/metadata/`,
//! `Edge::decide_api` on the API proxy route) against cluster B's fixed
//! configuration ([`fixture::config`]), one token cache and one limiter per
//! input, as one filter worker holds them.
//!
//! Input: one request per line (16 at most), fields separated by tabs:
//! `role method path authorization if-none-match seconds`. `role` is `m`
//! (metadata, the default), `a` (API proxy; the fifth field is then extra
//! headers `name:value|name:value`) or `w` (peer A's watch ends). An
//! authorization of `@a <claims>`, `@c <claims>` or `@x <claims>` is
//! `Bearer` and the claims JSON signed by peer A's, peer C's or a
//! stranger's key. `seconds` moves the clock forward (or back) before the
//! request.
//!
//! Properties: nothing panics; paths outside `/metadata/` pass untouched and
//! every path inside is answered; each reply's status is its event's; a
//! document is served only to GET or HEAD on its own path; the private
//! document only with a token that, read from scratch, is in force now
//! (cached or not), names a peer and has scope `private-multicluster`; a 304
//! only for a matching `If-None-Match`; the API route lets through only GETs
//! the API guard allows, with a token in force of scope `api` whose `sub`
//! is the peer reported, and never more watches than the limit.

use crate::{fixture, oracle};
use multicloud_core::apiguard::{check_request, empty_secrets_path, PeerLimiter};
use multicloud_core::edge::{
    ApiOutcome, ApiRequest, Doc, Event, Outcome, Request, TokenCache, METADATA_PREFIX, PRIVATE_MULTICLUSTER_PATH, PUBLIC_JSON_PATH,
    SPIFFE_BUNDLE_PATH,
};
use multicloud_core::reply::GuardRefusal;

const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let edge = fixture::edge();
    let config = edge.config();
    let mut cache = TokenCache::default();
    let mut limiter = PeerLimiter::default();
    let mut now = fixture::NOW;
    for line in text.lines().take(16) {
        let f: Vec<&str> = line.split('\t').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or_default();
        let (role, method, path) = (field(0), field(1), field(2));
        now = now.saturating_add(field(5).trim().parse::<i64>().unwrap_or(0));
        let auth = authorization(f.get(3).copied());
        match role {
            "w" => limiter.watch_ended(&fixture::A.to_ascii_lowercase()),
            "a" => {
                let mut headers: Vec<(&str, &str)> = vec![(":method", method), (":path", path)];
                if let Some(a) = auth.as_deref() {
                    headers.push(("authorization", a));
                }
                headers.extend(field(4).split('|').filter_map(|kv| kv.split_once(':')));
                let now_ms = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
                let req = ApiRequest { method, path, authorization: auth.as_deref(), headers: headers.iter().copied() };
                match edge.decide_api(req, now_ms, &mut cache, &mut limiter) {
                    ApiOutcome::Allow { peer, read, rewrite } => {
                        let t = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
                        let held = in_force(auth.as_deref(), t, config.api.max_token_lifetime_seconds)
                            .unwrap_or_else(|why| panic!("API request {line:?} allowed with a token whose {why}"));
                        assert_eq!(held.scope, "api", "API request {line:?} allowed with scope {:?}", held.scope);
                        assert_eq!(&*peer, held.sub.to_ascii_lowercase());
                        assert_eq!(method, "GET");
                        let guard = check_request(method, path, headers.iter().copied(), usize::MAX, &config.api);
                        assert_eq!(guard.map(|c| c.read), Ok(read), "the edge allowed {line:?} as {read:?}");
                        let sent = guard.is_ok_and(|c| c.to_empty_namespace).then(|| empty_secrets_path(path, &config.api.empty_namespace));
                        assert_eq!(rewrite, sent, "the edge sends {line:?} where the guard says");
                        assert!(limiter.watches(&peer) <= config.api.max_watches, "more watches than the limit");
                    }
                    ApiOutcome::Refuse(reply, r) => assert_eq!(reply.status, r.status()),
                }
            }
            _ => {
                let inm = f.get(4).copied().filter(|s| !s.is_empty());
                let req = Request { method, path, authorization: auth.as_deref(), if_none_match: inm };
                let outcome = edge.decide(&req, || now, &mut cache);
                metadata_outcome(line, &req, outcome, now);
            }
        }
    }
}

/// The `Authorization` value of a field, signing `@a`/`@c`/`@x` claims.
fn authorization(field: Option<&str>) -> Option<String> {
    let field = field.filter(|s| !s.is_empty())?;
    let signer =
        |seed: u8, claims: &str| format!("Bearer {}", fixture::sign_raw(&fixture::key(seed), HEADER.as_bytes(), claims.as_bytes()));
    Some(match field.split_once(' ') {
        Some(("@a", c)) => signer(fixture::A_SEED, c),
        Some(("@c", c)) => signer(fixture::C_SEED, c),
        Some(("@x", c)) => signer(fixture::STRANGER_SEED, c),
        _ => field.to_string(),
    })
}

/// The bearer token of `auth`, read as RFC 6750 says, in force for peer A or C.
fn in_force(auth: Option<&str>, now: i64, max_lifetime: i64) -> Result<oracle::Held, &'static str> {
    let auth = auth.ok_or("Authorization header is absent")?.trim();
    let (scheme, token) = auth.split_once(' ').ok_or("Authorization header has no scheme")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("scheme is not Bearer");
    }
    let token = token.trim();
    let mut last = "sub is not a peer";
    for (uuid, seed) in [(fixture::A, fixture::A_SEED), (fixture::C, fixture::C_SEED)] {
        match oracle::token_in_force(token, &fixture::key(seed).verifying_key(), fixture::B, now, max_lifetime) {
            Ok(held) if held.sub.eq_ignore_ascii_case(uuid) => return Ok(held),
            Ok(_) => last = "sub is not the peer whose key signed it",
            Err(why) => last = why,
        }
    }
    Err(last)
}

fn metadata_outcome(line: &str, req: &Request<'_>, outcome: Outcome<'_>, now: i64) {
    let edge = fixture::edge();
    let path = req.path.split_once('?').map_or(req.path, |(p, _)| p);
    let Outcome::Reply(reply, event) = outcome else {
        assert!(!path.starts_with(METADATA_PREFIX), "{line:?}: a metadata path passed untouched");
        return;
    };
    assert!(path.starts_with(METADATA_PREFIX), "{line:?}: answered a path outside /metadata/");
    let doc = match event {
        Event::Served(d) => {
            assert_eq!(reply.status, 200);
            d
        }
        Event::NotModified(d) => {
            assert_eq!(reply.status, 304);
            let inm = req.if_none_match.expect("a 304 needs If-None-Match");
            let etag = edge.etag(d);
            assert!(
                inm.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)),
                "{line:?}: 304 for If-None-Match {inm:?}, ETag {etag}"
            );
            d
        }
        Event::Refused(r) => {
            assert_eq!(reply.status, r.status());
            return;
        }
    };
    assert!(matches!(req.method, "GET" | "HEAD"), "{line:?}: a document served to {}", req.method);
    let want = match doc {
        Doc::Public => PUBLIC_JSON_PATH,
        Doc::SpiffeBundle => SPIFFE_BUNDLE_PATH,
        Doc::PrivateMulticluster => PRIVATE_MULTICLUSTER_PATH,
    };
    assert_eq!(path, want, "{line:?}: {doc:?} served on another path");
    if doc == Doc::PrivateMulticluster {
        let held = in_force(req.authorization, now, fixture::MAX_PRIVATE_LIFETIME)
            .unwrap_or_else(|why| panic!("{line:?}: private document served with a token whose {why}"));
        assert_eq!(held.scope, "private-multicluster", "{line:?}: private document served to scope {:?}", held.scope);
    }
    if event == Event::Served(Doc::Public) {
        assert_eq!(reply.body, serde_json::to_vec(&edge.config().public).unwrap());
    }
}
